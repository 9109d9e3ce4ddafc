"""``python -m bench.local_saves``: how long ``python main.py``'s saves take with a backlog.

A crash of the local server loses the events accepted since its last save: at most the
save interval (5 s) and the length of one save. This sends ``--events`` events at once
(JSON batches of 500, from 4 threads), far more than the server counts in the time
(about 2,000 a second here), lets it save ``--saves`` times, and prints each save's
length and how many events it found waiting, as the server logs them at DEBUG.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import servers
from devserver.services import SAVE_INTERVAL_SECONDS

SAVE_LINE = re.compile(r"saved in ([\d.]+) s \((\d+) events not yet counted\)")
BATCH_EVENTS = 500


def send_events(port: int, count: int) -> float:
    """POST ``count`` view events to /track in batches; the seconds it took."""
    body = json.dumps({"events": [{"type": "view", "item": f"item-{n % 200}"} for n in range(BATCH_EVENTS)]}).encode()

    def send(_: int) -> None:
        request = urllib.request.Request(
            f"http://{servers.HOST}:{port}/track", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, range(count // BATCH_EVENTS)))
    return time.monotonic() - started


def wait_until_serving(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + servers.START_TIMEOUT_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"http://{servers.HOST}:{port}/stats", timeout=5):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise servers.ServerError(f"python main.py did not start (exit code {process.poll()})") from None
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.local_saves", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=800_000)
    parser.add_argument("--saves", type=int, default=3, help="saves to wait for once the events are sent")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        port = servers.free_port()
        env = {
            **os.environ,
            "PORT": str(port),
            "CLICKQUEUE_DATA_DIR": str(Path(directory) / "data"),
            "CLICKQUEUE_STOP_DRAIN_SECONDS": "0",
            "LOG_LEVEL": "DEBUG",
        }
        log_path = Path(directory) / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(servers.REPO_ROOT / "main.py")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        try:
            wait_until_serving(port, process)
            seconds = send_events(port, args.events)
            print(f"sent {args.events:,} events in {seconds:.1f} s", flush=True)
            time.sleep(SAVE_INTERVAL_SECONDS * args.saves)
        finally:
            servers.stop(process, timeout_seconds=120)
        saves = [(float(length), int(waiting)) for length, waiting in SAVE_LINE.findall(log_path.read_text())]
    for length, waiting in saves:
        print(f"save: {length:.3f} s, {waiting:,} events not yet counted")
    print(f"longest save: {max(length for length, _ in saves):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
