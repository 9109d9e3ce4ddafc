"""Baselines for ``/track``: a webapp2 handler that does nothing, on the same URL.

``app`` is bare webapp2; ``wrapped_app`` adds App Engine's ``wrap_wsgi_app``
middleware, which the real app needs for its bundled services (main.py).
``python -m bench`` serves both with the same gunicorn options as ``bench.track_app``.
"""

from __future__ import annotations

import webapp2
from google.appengine.api import wrap_wsgi_app


class NoopHandler(webapp2.RequestHandler):
    """Answers 204 No Content, as /track does, and nothing else."""

    def get(self) -> None:
        self.response.status_int = 204


app = webapp2.WSGIApplication([webapp2.Route("/track", NoopHandler, methods=["GET"])])
wrapped_app = wrap_wsgi_app(app)
