"""The stubs of the development server's worker: set up, restored, saved, drained at the stop."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

from google.appengine.api import apiproxy_stub_map, taskqueue
from google.appengine.ext import testbed

from clickqueue import Queue
from clicks import counting
from clicks.http_errors import BatchFailedError
from clicks.processing import FOLD_PATH, PROCESS_PATH, drain
from clicks.settings import Settings
from devserver import APP_ID, APP_ROOT
from devserver.datastore import LocalDatastoreStub
from devserver.gate import RequestGate
from devserver.queue_file import QueueFile, SavedEntry, SavedQueue, copy_queue_entries, restore
from devserver.tasks import LocalRequestInfo, LoopbackDispatcher

SAVE_INTERVAL_SECONDS = 5.0
CUT_REQUESTS_WAIT_SECONDS = 10
"""After the requests in flight had their time: how long those still in the app (cut
from their clients' bytes) may take to leave it before the drain starts without them
(a /process request runs for its 5-second budget)."""
DRAIN_SECONDS = 30
"""The longest a stop spends counting the queue before it saves the rest (``CLICKQUEUE_STOP_DRAIN_SECONDS``
sets less; 0 saves it all at once)."""
STOP_DRAIN_ENV = "CLICKQUEUE_STOP_DRAIN_SECONDS"
HOLD_TASKS_ENV = "CLICKQUEUE_DISABLE_TASK_RUNNING"
"""``1`` runs no task while serving, as dev_appserver's ``--disable_task_running``: events
queue up uncounted until the stop drains them (or the next start, after a crash)."""
DRAIN_STEP_SECONDS = 1.0
"""Progress is logged after each step of the shutdown drain."""

logger = logging.getLogger(__name__)


class LocalServices:
    """The stubs of one worker process, and what starts and stops them."""

    def __init__(
        self,
        port: int,
        data_dir: Path,
        settings: Settings,
        drain_seconds: float = DRAIN_SECONDS,
        run_tasks: bool = True,
    ) -> None:
        os.environ.pop("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", None)  # never send tasks to Cloud Tasks
        self.settings = settings
        self.drain_seconds = drain_seconds
        self.run_tasks = run_tasks
        self.datastore_file = data_dir / "datastore.db"
        self.bed = testbed.Testbed()
        self.bed.activate()
        self.bed.setup_env(app_id=APP_ID, overwrite=True)
        self.bed.init_memcache_stub()
        self.datastore = LocalDatastoreStub(APP_ID, self.datastore_file)
        apiproxy_stub_map.apiproxy.RegisterStub("datastore_v3", self.datastore)
        self.bed.init_taskqueue_stub(
            root_path=str(APP_ROOT),
            auto_task_running=True,
            request_data=LocalRequestInfo(LoopbackDispatcher(port)),
        )
        self.task_queue = self.bed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)
        self.memcache = self.bed.get_stub(testbed.MEMCACHE_SERVICE_NAME)
        self.queue_file = QueueFile(data_dir)
        self.gate = RequestGate()
        self._save_lock = threading.Lock()
        self._last_saved_queue: tuple[int, list[SavedEntry]] | None = None
        self._stopping = threading.Event()
        self._saver = threading.Thread(target=self._save_periodically, name="datastore-saver", daemon=True)
        self.lost_before = self._restore_queue()

    def _restore_queue(self) -> int:
        """Put back the queue saved with this Datastore, if any (memcache only: ``start``
        counts the batches it holds); the queue's ``lost`` count then."""
        saved = self.queue_file.load(self.datastore.version())
        if saved is None:
            return 0
        restore(saved.entries, time.time())
        stats = self.settings.queue.stats()
        log = logger.info if saved.stopped else logger.warning
        log(
            "restored the queue saved at %s %s: %d events queued, %d leased, %d lost so far",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved.saved_at)),
            "by an orderly stop"
            if saved.stopped
            else "while serving: the last run ended without an orderly stop (kill -9, a crash), and the events it "
            "accepted after that save are lost",
            stats.depth,
            stats.leased,
            stats.lost,
        )
        return stats.lost

    def _count_orphaned_leases(self) -> None:
        """Count the batches a processor of the last run held: it ended with that run, so
        they are taken over now, not once their leases expire. Through a queue whose clock
        runs one lease ahead, where they have expired; each comes back under its lease id,
        which its CountedBatch knows (none is counted twice)."""
        queue = self.settings.queue
        ahead = Queue(queue.name, shards=queue.shards, clock=lambda: time.time() + self.settings.lease_seconds)
        step = dataclasses.replace(self.settings, queue=ahead, time_budget_seconds=DRAIN_STEP_SECONDS)
        try:
            while drain(step).caught_up:  # a short orphaned batch stops a drain; the next goes on
                pass
        except BatchFailedError as error:
            logger.error(
                "counting the batches held when the last run ended failed (%s): they wait for their leases to expire",
                error,
            )

    def start(self) -> None:
        """Once the app exists (``LocalServer.load`` says why): count the batches a processor
        of the last run held, make the link key and save it, then run due tasks and save on a
        timer, count the rest of a restored queue, and fold the batches the last run recorded
        but did not fold."""
        if self.settings.queue.stats().leased:
            self._count_orphaned_leases()
            self.lost_before = self.settings.queue.stats().lost  # what those batches lacked, the last run lost
        self.settings.links.key()  # a key made now is saved next, before any link is signed with it
        self.save()
        if self.run_tasks:
            self.task_queue.StartBackgroundExecution()
        else:
            logger.warning("%s=1: no task runs; events are counted only when the server stops", HOLD_TASKS_ENV)
        self._saver.start()
        if self.settings.queue.stats().depth:
            taskqueue.add(url=PROCESS_PATH, queue_name=self.settings.task_queue_name)
        if counting.unfolded_batches(1):
            taskqueue.add(url=FOLD_PATH, queue_name=self.settings.fold_queue_name)

    def stop_running_tasks(self) -> None:
        """Run no more tasks: the shutdown drains the queue itself."""
        self.task_queue.Shutdown()

    def _save_periodically(self) -> None:
        while not self._stopping.wait(SAVE_INTERVAL_SECONDS):
            try:
                self.save()
            except OSError as error:
                logger.error("could not save to %s: %s", self.datastore_file.parent, error)

    def save(self, *, stopping: bool = False) -> None:
        """Save Datastore and the queue as one (see devserver/queue_file.py), each only if it changed.

        ``stopping``: the last save; memcache stays held afterwards, so no request can
        store an event (and answer that it did) that this save did not keep."""
        with self._save_lock:
            started = time.monotonic()
            stats = self.settings.queue.stats().as_dict()  # before the copy: the copy holds at least these

            def save_queue(datastore_version: int) -> None:
                entries, foreign = copy_queue_entries(self.memcache, self.settings.queue.keys.prefix, hold=stopping)
                logger.debug("copied %d queue keys %.3f s into the save", len(entries), time.monotonic() - started)
                if foreign:
                    logger.warning("%d queue keys held values of another type and were not saved", foreign)
                if not stopping and self._last_saved_queue == (datastore_version, entries):
                    return
                self.queue_file.write_next(SavedQueue(datastore_version, time.time(), stopping, stats, entries))
                self._last_saved_queue = (datastore_version, entries)

            self.datastore.save(save_queue)
            if self.queue_file.next_path.exists():
                self.queue_file.commit_next()
            logger.debug("saved in %.3f s (%d events not yet counted)", time.monotonic() - started, stats["depth"])

    def stop(self) -> int:
        """Let no more requests in and cut those still reading, drain the queue into Datastore
        (bounded, with progress), save both, deactivate the stubs. The exit status: 0 once
        everything accepted is counted or saved, 1 if the save failed or the queue lost events."""
        self.stop_running_tasks()
        still_inside = self.gate.close(CUT_REQUESTS_WAIT_SECONDS)
        if still_inside:
            logger.warning(
                "%d requests were still in the app %g s after they were cut: events they store before the last save "
                "are kept, after it they cannot be stored",
                still_inside,
                CUT_REQUESTS_WAIT_SECONDS,
            )
        self._stopping.set()
        if self._saver.is_alive():
            self._saver.join()
        self.drain_queue()
        self.fold_recorded()
        stats = self.settings.queue.stats()
        try:
            self.save(stopping=True)
        except OSError as error:
            logger.error(
                "could not save to %s: %s; the %d events not yet counted, and what was counted since the last save, "
                "are lost",
                self.datastore_file.parent,
                error,
                stats.depth + stats.leased,
            )
            return 1
        self.bed.deactivate()
        logger.info(
            "stopped; datastore saved to %s, the queue (%d events not yet counted) to %s",
            self.datastore_file,
            stats.depth + stats.leased,
            self.queue_file.path,
        )
        if stats.lost > self.lost_before:
            logger.error(
                "the queue lost %d events while this server ran (memcache evicted them): they are not counted, "
                "and /stats shows them in queue.lost",
                stats.lost - self.lost_before,
            )
            return 1
        return 0

    def fold_recorded(self) -> None:
        """Fold every recorded batch into the count store, as the fold task does."""
        folds = 0
        while counting.fold(self.settings.clock()).more:
            folds += 1
        logger.info("folded the recorded batches into the count store (%d commits)", folds + 1)

    def drain_queue(self) -> None:
        """Count every queued event, as the processing task does; log what could not be."""
        queue = self.settings.queue
        logger.info("stopping: draining %d queued events into the datastore", queue.stats().depth)
        step = dataclasses.replace(self.settings, time_budget_seconds=DRAIN_STEP_SECONDS)
        deadline = time.monotonic() + self.drain_seconds
        counted = 0
        while time.monotonic() < deadline:
            try:
                report = drain(step)
            except BatchFailedError as error:
                logger.error("draining failed: %s", error)
                break
            counted += report.processed
            if not (report.budget_spent or report.caught_up):
                break
            logger.info("draining: %d events counted, %d still queued", counted, queue.stats().depth)
        stats = queue.stats()
        logger.info("drained: %d events counted", counted)
        if stats.depth or stats.leased:
            logger.warning(
                "%d queued and %d leased events were not counted in time: they are saved with the queue and counted "
                "after the next start",
                stats.depth,
                stats.leased,
            )
