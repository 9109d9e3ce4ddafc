"""``python main.py`` with every thread its worker starts under cProfile (CPU time), for
``python -m bench.profile --local-server``.

It serves as main.py does (``devserver.server.serve``), through main.py's own seam: the
``create_app`` it passes builds the app, then has each thread started afterwards
(gunicorn's request threads, the task queue's) profile itself from its first call.
Each time a file ``<name>.requested`` appears in ``$CLICKQUEUE_PROFILE_DIR``, a
thread of its own writes there each thread's profile so far (``<name>-<n>.prof``,
readable by ``pstats``; calls still running are not in it), then ``<name>.written``.
"""

from __future__ import annotations

import cProfile
import marshal
import os
import threading
import time
from pathlib import Path
from wsgiref.types import WSGIApplication

import devserver.server
import main
from clicks.settings import Settings

PROFILE_DIR_ENV = "CLICKQUEUE_PROFILE_DIR"
REQUESTED, WRITTEN = ".requested", ".written"
POLL_SECONDS = 0.1


class ThreadProfiles:
    """One cProfile.Profile per thread started after ``start``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()

    def _profile_this_thread(self, frame, event, arg) -> None:
        profile = cProfile.Profile(time.thread_time)  # CPU time: a thread waiting on a lock or socket costs none
        with self.lock:
            self.profiles.append(profile)
        profile.enable()  # takes over from this hook, for this thread

    def start(self) -> None:
        threading.Thread(target=self._write_when_requested, name="profile-writer", daemon=True).start()
        threading.setprofile(self._profile_this_thread)

    def _write_when_requested(self) -> None:
        while True:
            for request in self.directory.glob(f"*{REQUESTED}"):
                name = request.name.removesuffix(REQUESTED)
                if not (self.directory / f"{name}{WRITTEN}").exists():
                    self._write(name)
            time.sleep(POLL_SECONDS)

    def _write(self, name: str) -> None:
        with self.lock:
            profiles = list(self.profiles)
        for number, profile in enumerate(profiles):
            profile.snapshot_stats()  # the counts so far, the thread's profile running on
            (self.directory / f"{name}-{number}.prof").write_bytes(marshal.dumps(profile.stats))
        (self.directory / f"{name}{WRITTEN}").touch()


def create_profiled_app(settings: Settings) -> WSGIApplication:
    app = main.create_app(settings)
    ThreadProfiles(Path(os.environ[PROFILE_DIR_ENV])).start()
    return app


if __name__ == "__main__":
    devserver.server.serve(
        create_profiled_app,
        port=devserver.server.parse_port(os.environ["PORT"]),
        data_dir=Path(os.environ["CLICKQUEUE_DATA_DIR"]),
    )
