/* clickqueue page snippet (no dependencies). On a page:
     <script defer src="https://APP/t.js" data-item="ITEM"></script>
   records a view of ITEM (default: the page's path), and a click on any element
   marked data-track-click="ID". Events within BATCH_MS go out in one request:
   navigator.sendBeacon of text/plain JSON (a CORS-simple request, no
   preflight), or fetch with keepalive where sendBeacon is missing or refuses.
   No cookies, no storage, nothing about the visitor but the event. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !script.src) return;
  var endpoint = new URL("/track", script.src).href;
  var BATCH_MS = 1000;
  var MAX_BATCH = 100;
  var pending = [];
  var timer = null;

  /* The item rule: data-item, or else the page's path percent-decoded; then
     leading and trailing slashes dropped, each "/" made ":", each run of
     other characters outside [A-Za-z0-9._:-] made "-", cut to 128
     characters; nothing left is "index". So "/blog/2024/hello%20world/" is
     "blog:2024:hello-world" and "/" is "index". */
  function decodedPath() {
    try {
      return decodeURIComponent(location.pathname);
    } catch (malformed) {
      return location.pathname;
    }
  }

  function toItem(text) {
    var item = String(text)
      .replace(/^\/+|\/+$/g, "")
      .replace(/\//g, ":")
      .replace(/[^A-Za-z0-9._:-]+/g, "-")
      .slice(0, 128);
    return item || "index";
  }

  function send() {
    clearTimeout(timer);
    timer = null;
    if (!pending.length) return;
    var body = JSON.stringify({ events: pending });
    pending = [];
    if (navigator.sendBeacon && navigator.sendBeacon(endpoint, body)) return;
    fetch(endpoint, {
      method: "POST",
      body: body,
      keepalive: true,
      mode: "no-cors",
      credentials: "omit",
      headers: { "Content-Type": "text/plain" }
    })["catch"](function () {});
  }

  function record(type, item) {
    pending.push({ type: type, item: item });
    if (pending.length >= MAX_BATCH) send();
    else if (!timer) timer = setTimeout(send, BATCH_MS);
  }

  var pageItem = toItem(script.getAttribute("data-item") || decodedPath());

  function onClick(event) {
    if (event.type === "auxclick" && event.button !== 1) return;
    var element = event.target instanceof Element ? event.target.closest("[data-track-click]") : null;
    if (element) record("click", toItem(element.getAttribute("data-track-click") || pageItem));
  }

  if (document.prerendering) {
    document.addEventListener("prerenderingchange", function () { record("view", pageItem); }, { once: true });
  } else {
    record("view", pageItem);
  }
  document.addEventListener("click", onClick, true);
  document.addEventListener("auxclick", onClick, true);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") send();
  });
  window.addEventListener("pagehide", send);
})();
