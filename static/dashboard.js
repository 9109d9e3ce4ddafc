/* The dashboard's chart (uPlot) of clicks, views and bots over time, read from
   /stats, with its 24 h / 7 d / 30 d switch; and the signed-link form.
   window.clickqueueDashboard holds what was drawn: the tests compare it with /stats. */
(function () {
  "use strict";
  var BUCKET_SECONDS = { hour: 3600, day: 86400 };
  var RANGES = {
    "24h": { bucket: "hour", buckets: 24 },
    "7d": { bucket: "hour", buckets: 7 * 24 },
    "30d": { bucket: "day", buckets: 30 }
  };
  var CHART_HEIGHT = 300;
  var dashboard = (window.clickqueueDashboard = { range: null, url: null, stats: null, chart: null });
  var chartElement = document.getElementById("chart");
  var statusElement = document.getElementById("chart-status");
  var rangeButtons = document.querySelectorAll("[data-range]");

  function chartData(stats) {
    var columns = [[], [], [], []];
    stats.series.forEach(function (point) {
      columns[0].push(Date.parse(point.start) / 1000);
      columns[1].push(point.view);
      columns[2].push(point.click);
      columns[3].push(point.bots);
    });
    return columns;
  }

  function chartOptions() {
    return {
      width: chartElement.clientWidth || 800,
      height: CHART_HEIGHT,
      tzDate: function (seconds) { return uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC"); },
      series: [
        {},
        { label: "Views", stroke: "#2563eb", width: 2, fill: "rgba(37, 99, 235, 0.08)" },
        { label: "Clicks", stroke: "#dc2626", width: 2 },
        { label: "Bots", stroke: "#9ca3af", width: 1, dash: [4, 4] }
      ],
      axes: [{}, { label: "events" }]
    };
  }

  function draw(stats, range) {
    var data = chartData(stats);
    if (dashboard.chart) dashboard.chart.setData(data);
    else dashboard.chart = new uPlot(chartOptions(), data, chartElement);
    dashboard.stats = stats;
    var totals = stats.totals;
    statusElement.textContent =
      totals.view + " views, " + totals.click + " clicks, " + totals.bots + " bot events from " +
      stats.from + " to " + stats.to + ", per " + stats.bucket + ".";
    document.body.setAttribute("data-chart-range", range);
  }

  function load(range) {
    var spec = RANGES[range];
    var from = new Date(Date.now() - (spec.buckets - 1) * BUCKET_SECONDS[spec.bucket] * 1000);
    var url = "/stats?bucket=" + spec.bucket + "&from=" + encodeURIComponent(from.toISOString());
    dashboard.range = range;
    dashboard.url = url;
    rangeButtons.forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.getAttribute("data-range") === range));
    });
    fetch(url, { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("/stats answered " + response.status);
        return response.json();
      })
      .then(function (stats) {
        if (dashboard.url === url) draw(stats, range);
      })
      .catch(function (error) {
        statusElement.textContent = "Could not load the series: " + error.message;
        console.error(error);
      });
  }

  rangeButtons.forEach(function (button) {
    button.addEventListener("click", function () { load(button.getAttribute("data-range")); });
  });
  window.addEventListener("resize", function () {
    if (dashboard.chart) dashboard.chart.setSize({ width: chartElement.clientWidth, height: CHART_HEIGHT });
  });

  var form = document.getElementById("sign-link");
  var output = document.getElementById("signed-link");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var query = new URLSearchParams(new FormData(form)).toString();
    fetch("/links?" + query, { credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (answer) { output.textContent = answer.link || answer.error; });
  });

  load("24h");
})();
