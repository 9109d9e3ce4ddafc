"""The sample app's domain: click and view events, from a request through the queue into counts.

It holds the rules a request's events must pass (``events``), who sent them
(``traffic``), which pages may send them (``origins``), signed links (``links``),
backpressure on intake (``intake``), the drain and its task scheduling
(``processing``), the count store and the steps into it (``counters``,
``counting``, ``legacy_counters``), the app's settings (``settings``), and the
errors that are HTTP answers (``http_errors``).

Not the library: ``clickqueue/`` is the reusable queue on memcache and knows
nothing of clicks, views or webapp2; this package is the app built on it.
``handlers/`` validates each request and calls in here.
"""
