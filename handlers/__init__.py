"""The sample app's request handlers: thin webapp2 layers over ``clickqueue``.

``main.py`` wires them into routes. Each handler validates its input
(``handlers.events``), calls the queue or the counters, and answers JSON (or
the dashboard's HTML, the pixel's GIF, a static file); ``handlers.base.JsonHandler``
turns errors into HTTP answers, all JSON.
"""
