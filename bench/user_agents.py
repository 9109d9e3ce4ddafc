"""``/track`` loaded with one ordinary browser User-Agent, then with hostile ones: 8,000
characters, each request's new, so no verdict is remembered and every request pays the
bot check (clicks/traffic.py). Their req/s ratio is what a client sending such
requests can take from everyone else.

``python -m bench`` measures it in each of its rounds; ``python -m bench.user_agents``
measures only this, in more rounds, with the CPU time gunicorn spent per request (from
/proc: less disturbed than req/s by other work on the machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ORDINARY_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
HOSTILE_USER_AGENT_CHARACTERS = 8000
"""gunicorn refuses a header line over 8,190 bytes (``limit_request_field_size``)."""
HOSTILE_FILLER = "Spider "
"""Repeated to fill a hostile User-Agent: of the texts tried, the dearest for the bot patterns
(it starts the patterns of the form ``Spider[\\s\\S]*...`` again at every repeat)."""

ORDINARY_SCRIPT = f"""request = function()
  return wrk.format(nil, nil, {{["User-Agent"] = "{ORDINARY_USER_AGENT}"}})
end
"""
"""Made per request by Lua, as the hostile ones are: wrk's cost per request is then alike."""


def long_user_agent_script(new_each_request: bool) -> str:
    """wrk's Lua for ``HOSTILE_USER_AGENT_CHARACTERS``-character User-Agents, new for each
    request (no verdict is remembered) or the same for all (the size's cost alone)."""
    unique = '"-" .. counter' if new_each_request else '"-"'
    return f"""local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
local counter = 0
local filler = string.rep("{HOSTILE_FILLER}", {HOSTILE_USER_AGENT_CHARACTERS // len(HOSTILE_FILLER)})
request = function()
  counter = counter + 1
  local agent = ("Mozilla/5.0 (" .. id .. {unique} .. ") " .. filler):sub(1, {HOSTILE_USER_AGENT_CHARACTERS})
  return wrk.format(nil, nil, {{["User-Agent"] = agent}})
end
"""


KINDS = {
    "ordinary": ORDINARY_SCRIPT,
    "hostile": long_user_agent_script(new_each_request=True),
    "repeated": long_user_agent_script(new_each_request=False),
}
"""A browser's User-Agent; new 8,000-character ones; one 8,000-character one, repeated
(against "hostile", what the bot check itself costs)."""


def write_scripts(directory: Path) -> dict[str, Path]:
    """wrk's Lua script of each kind of User-Agent, written into ``directory``."""
    paths = {}
    for kind, script in KINDS.items():
        paths[kind] = directory / f"user-agents-{kind}.lua"
        paths[kind].write_text(script)
    return paths


def compare(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Each kind's median req/s and gunicorn CPU per request over the rounds, and the medians
    of the rounds' ratios of hostile to ordinary and to repeated: req/s (hostile's over the
    other's) and CPU (the other's over hostile's), so 1 is as cheap, lower dearer."""

    def ratio(other: str, metric: str) -> float:
        pairs = [(r["hostile"][metric], r[other][metric]) for r in rounds]
        if metric == "cpu_ms_per_request":
            pairs = [(theirs, ours) for ours, theirs in pairs]
        return round(statistics.median(a / b for a, b in pairs), 3)

    return {
        **{kind: round(statistics.median(r[kind]["per_second"] for r in rounds), 1) for kind in KINDS},
        "cpu_ms_per_request": {
            kind: round(statistics.median(r[kind]["cpu_ms_per_request"] for r in rounds), 4) for kind in KINDS
        },
        "non_2xx": {kind: sum(r[kind]["non_2xx"] for r in rounds) for kind in KINDS},
        "hostile_to_ordinary": ratio("ordinary", "per_second"),
        "cpu_hostile_to_ordinary": ratio("ordinary", "cpu_ms_per_request"),
        "hostile_to_repeated": ratio("repeated", "per_second"),
        "cpu_hostile_to_repeated": ratio("repeated", "cpu_ms_per_request"),
        "hostile_user_agent_characters": HOSTILE_USER_AGENT_CHARACTERS,
    }


def load_round(url: str, load: Any, scripts: dict[str, Path], server_pid: int) -> dict[str, dict[str, Any]]:
    """One run of each kind (in the order given), with the CPU gunicorn spent per request."""
    from bench.http_load import run_wrk  # here: bench.http_load imports this module

    runs = {}
    for kind, script in scripts.items():
        before = cpu_seconds(server_pid)
        run = run_wrk(url, load, script)
        run["cpu_ms_per_request"] = (cpu_seconds(server_pid) - before) * 1000 / max(run["requests"], 1)
        runs[kind] = run
    return runs


def describe(compared: dict[str, Any]) -> str:
    """The comparison in one line (the benchmark's table prints it too)."""
    cpu = compared["cpu_ms_per_request"]
    return (
        f"/track User-Agents, req/s (gunicorn CPU per request): {compared['ordinary']:,.0f} ({cpu['ordinary']:.3f} ms) "
        f"with a browser's, {compared['hostile']:,.0f} ({cpu['hostile']:.3f} ms) with a new "
        f"{HOSTILE_USER_AGENT_CHARACTERS}-character one each, {compared['repeated']:,.0f} ({cpu['repeated']:.3f} ms) "
        f"with one repeated; new ones / a browser's {compared['hostile_to_ordinary']:.2f}x "
        f"({compared['cpu_hostile_to_ordinary']:.2f}x), / repeated {compared['hostile_to_repeated']:.2f}x "
        f"({compared['cpu_hostile_to_repeated']:.2f}x) (medians of the rounds)"
    )


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of process ``pid`` and its children now alive (gunicorn's workers)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout.split()
    ticks = 0
    for process in [str(pid), *children]:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    from bench import servers
    from bench.http_load import MEMCACHED_ENV, TRACK_PATH, HttpLoad, run_wrk  # here: it imports this module

    parser = argparse.ArgumentParser(prog="python -m bench.user_agents", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=3, help="wrk duration of each run")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    load = HttpLoad(args.seconds, args.connections)
    rounds = []
    with servers.memcached() as memcached, tempfile.TemporaryDirectory() as directory:
        scripts = write_scripts(Path(directory))
        env = {MEMCACHED_ENV: f"{servers.HOST}:{memcached.port}"}
        with servers.gunicorn("bench.track_app:app", 2, 8, servers.REPO_ROOT, env) as server:
            url = f"http://{servers.HOST}:{server.port}{TRACK_PATH}"
            run_wrk(url, HttpLoad(1, args.connections), scripts["ordinary"])  # warm up
            for number in range(args.rounds):
                order = list(scripts.items()) if number % 2 == 0 else list(reversed(scripts.items()))
                runs = load_round(url, load, dict(order), server.process.pid)
                rounds.append(runs)
                print(
                    f"round {number + 1}: "
                    + ", ".join(
                        f"{kind} {runs[kind]['per_second']:,.0f} req/s, {runs[kind]['cpu_ms_per_request']:.3f} ms CPU"
                        for kind in KINDS
                    ),
                    flush=True,
                )
    print(describe(compare(rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
