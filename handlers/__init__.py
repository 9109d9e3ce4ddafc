"""The sample app's request handlers, and only those: thin webapp2 layers over ``clicks``.

``main.py`` wires them into routes. Each handler reads its input, calls the
domain (``clicks``: the events' rules, the queue, the counts) and answers JSON
(or the dashboard's HTML, the pixel's GIF, a static file);
``handlers.base.JsonHandler`` turns errors into HTTP answers, all JSON.
"""
