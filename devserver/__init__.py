"""The development server (``python main.py``): the app on gunicorn and the App Engine SDK's stubs.

gunicorn, as app.yaml runs it, with one worker process holding the SDK's stubs
for memcache, the task queue and Datastore.

Why gunicorn and not wsgiref: it is the server App Engine runs, so chunked
bodies, keep-alive, idle timeouts (a connection sending nothing is dropped
after a few seconds) and graceful stops behave here as they do there. It runs
one worker, so every request and every stub live in that one process; the
gunicorn master only forks it and passes signals on.

Lifecycle, in the worker:

* start: Datastore is loaded from ``<data_dir>/datastore.db`` (if there is
  one), and the queue's memcache keys saved with it from ``queue.json``
  (``devserver.queue_file``); batches a processor of the last run held are counted
  at once, the rest by a task. The task queue starts empty. Due tasks are sent
  back to this server over HTTP, as App Engine would send them.
* serving: Datastore and the queue are saved together every
  ``SAVE_INTERVAL_SECONDS``.
* SIGTERM or Ctrl-C: stop accepting, finish the requests in flight (at most
  ``FINISH_REQUESTS_SECONDS``), cut those still reading and let no other in
  (``RequestGate``), drain the queue into Datastore with the processing task's
  own ``drain`` (at most ``DRAIN_SECONDS``, progress logged), fold the recorded
  batches into the count store as the fold task does, save Datastore and the
  rest of the queue, exit: 0, or 1 if the save failed or the queue lost events
  while serving. A second Ctrl-C stops within 2 s, like kill -9.
* kill -9, or a crash: the next start restores the last save; the events
  accepted after it are lost (at most ``SAVE_INTERVAL_SECONDS`` and the length
  of a save), the counts made after it are made again.

Its modules, by what each serves: ``datastore`` (the Datastore stub, saved on a
timer), ``tasks`` (due tasks sent back over HTTP), ``queue_file`` (the queue
saved with Datastore), ``services`` (the stubs of the worker, its saves and its
stop), ``gate`` (requests let in until the stop), ``server`` (gunicorn, its
worker and master, the local admin, ``serve``); ``sdk`` names the SDK internals
they rely on.
"""

from __future__ import annotations

from pathlib import Path

APP_ID = "dev~clickqueue-sample"
APP_ROOT = Path(__file__).resolve().parent.parent
"""The app's folder: index.yaml and queue.yaml are read from it."""
HOST = "127.0.0.1"
