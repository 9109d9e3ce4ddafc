"""``/track`` loaded with one ordinary browser User-Agent, then with hostile ones: 8,000
characters, each request's new, so no verdict is remembered and every request pays the
bot check (handlers/traffic.py). Their req/s ratio is what a client sending such
requests can take from everyone else."""

from __future__ import annotations

import statistics
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
HOSTILE_SCRIPT = f"""local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
local counter = 0
local filler = string.rep("{HOSTILE_FILLER}", {HOSTILE_USER_AGENT_CHARACTERS // len(HOSTILE_FILLER)})
request = function()
  counter = counter + 1
  local agent = ("Mozilla/5.0 (" .. id .. "-" .. counter .. ") " .. filler):sub(1, {HOSTILE_USER_AGENT_CHARACTERS})
  return wrk.format(nil, nil, {{["User-Agent"] = agent}})
end
"""
KINDS = {"ordinary": ORDINARY_SCRIPT, "hostile": HOSTILE_SCRIPT}


def write_scripts(directory: Path) -> dict[str, Path]:
    """wrk's Lua script of each kind of User-Agent, written into ``directory``."""
    paths = {}
    for kind, script in KINDS.items():
        paths[kind] = directory / f"user-agents-{kind}.lua"
        paths[kind].write_text(script)
    return paths


def compare(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Each kind's median req/s over the rounds, and the median of the rounds' hostile / ordinary."""
    return {
        **{kind: round(statistics.median(r[kind]["per_second"] for r in rounds), 1) for kind in KINDS},
        "non_2xx": {kind: sum(r[kind]["non_2xx"] for r in rounds) for kind in KINDS},
        "hostile_to_ordinary": round(
            statistics.median(r["hostile"]["per_second"] / r["ordinary"]["per_second"] for r in rounds), 3
        ),
        "hostile_user_agent_characters": HOSTILE_USER_AGENT_CHARACTERS,
    }
