"""The clickqueue sample app: routes, and ``python main.py`` to run it locally.

On App Engine, gunicorn serves ``main:app`` (see app.yaml). ``python main.py``
serves it on http://127.0.0.1:$PORT (default 8080) with the SDK's stubs for
memcache, task queue and datastore (see devserver/).
"""

from __future__ import annotations

import os
from pathlib import Path
from wsgiref.types import WSGIApplication

import webapp2
from google.appengine.api import wrap_wsgi_app

from clicks.processing import FOLD_PATH, PROCESS_PATH
from clicks.settings import CONFIG_KEY, Settings
from handlers.assets import AssetHandler
from handlers.base import JsonApplication
from handlers.dashboard import DashboardHandler, HomeHandler
from handlers.go import GoHandler, SignLinkHandler
from handlers.pixel import PixelHandler
from handlers.stats import StatsHandler
from handlers.tasks import FoldTaskHandler, ProcessCronHandler, ProcessTaskHandler
from handlers.track import TrackHandler

# Each handler's methods (get, post) are the methods its path answers; any
# other answers 405 with Allow. app.yaml keeps ADMIN_PATHS for admins (login: admin).
ROUTES = [
    webapp2.Route("/track", TrackHandler),
    webapp2.Route("/p.gif", PixelHandler),
    webapp2.Route("/go", GoHandler),
    webapp2.Route("/t.js", AssetHandler),
    webapp2.Route("/static/<name:.+>", AssetHandler),
    webapp2.Route(PROCESS_PATH, ProcessTaskHandler),
    webapp2.Route(FOLD_PATH, FoldTaskHandler),
    webapp2.Route("/cron/process", ProcessCronHandler),
    webapp2.Route("/", HomeHandler),
    webapp2.Route("/dashboard", DashboardHandler),
    webapp2.Route("/stats", StatsHandler),
    webapp2.Route("/links", SignLinkHandler),
]
ADMIN_PATHS = ("/dashboard", "/stats", "/links")


def create_app(settings: Settings | None = None) -> WSGIApplication:
    """The WSGI app, wrapped for App Engine's bundled services.

    ``wrap_wsgi_app`` copies ``os.environ``: call this once the environment
    (and, locally, the stubs) is set up.
    """
    config = {CONFIG_KEY: settings or Settings()}
    return wrap_wsgi_app(JsonApplication(ROUTES, config=config))


if __name__ == "__main__":
    from devserver import server

    server.serve(
        create_app,
        port=server.parse_port(os.environ.get("PORT", "8080")),
        data_dir=Path(os.environ.get("CLICKQUEUE_DATA_DIR", Path(__file__).resolve().parent / ".local-data")),
        admin_paths=ADMIN_PATHS,
        drain_seconds=server.parse_drain_seconds(os.environ.get(server.STOP_DRAIN_ENV, str(server.DRAIN_SECONDS))),
        run_tasks=not server.parse_hold_tasks(os.environ.get(server.HOLD_TASKS_ENV, "0")),
    )
else:
    app = create_app()
