"""Set up a virtualenv if needed, then run the app, the tests or the benchmark in it.

    python3 dev.py run      # the app on http://127.0.0.1:8080 (PORT overrides), on the SDK's stubs
    python3 dev.py test     # the whole test suite; extra arguments go to pytest
    python3 dev.py test --fast   # without the slow parts (FAST_LEAVES_OUT), for the edit-test loop
    python3 dev.py bench    # the benchmark; extra arguments go to `python -m bench`
    python3 dev.py soak --minutes 30   # the queue's fault simulation, seed after seed
    python3 dev.py soak-counting --minutes 30   # the counting commit protocol's simulation
    python3 dev.py mutants run         # mutation testing of the library (hours)
    python3 dev.py typecheck           # mypy --strict on clickqueue/
    python3 dev.py test --python 3.13   # the same on another Python

Needs only Python 3.11+. The Python running dev.py gets the virtualenv .venv;
`--python 3.13` (a version, found as python3.13 on PATH or in pyenv) or
`--python /path/to/python` picks another, with a virtualenv of its own
(.venv-3.13). A virtualenv is refilled when requirements-dev.txt or
requirements.txt changes, and rebuilt when its interpreter changes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REQUIREMENTS = [ROOT / "requirements.txt", ROOT / "requirements-dev.txt"]
COMMANDS = {
    "run": (["main.py"], "serve the app locally on the App Engine SDK's stubs (arguments go to main.py)"),
    "test": (["-m", "pytest"], "run the test suite (arguments go to pytest)"),
    "bench": (["-m", "bench"], "run the benchmark (arguments go to `python -m bench`)"),
    "soak": (
        ["-m", "tests.sim"],
        "run the queue's deterministic simulation on many seeds (e.g. --minutes 30; arguments go to `python -m tests.sim`)",
    ),
    "soak-counting": (
        ["-m", "tests.sim_counting"],
        "run the counting commit protocol's deterministic simulation on many seeds"
        " (arguments go to `python -m tests.sim_counting`)",
    ),
    "mutants": (["-m", "mutmut"], "mutation-test clickqueue/ (e.g. `run`, `results`; arguments go to mutmut)"),
    "typecheck": (["-m", "mypy"], "type-check clickqueue/ with mypy in strict mode (pyproject.toml; arguments go to mypy)"),
}
FAST_LEAVES_OUT = ("slow", "processes", "browser", "dev_appserver", "benchmark")
"""The pytest marks (pyproject.toml) whose tests ``test --fast`` leaves out."""
VERSION = re.compile(r"(\d+)\.(\d+)")
PROBE = "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.executable)"


class InterpreterNotFoundError(Exception):
    """The Python asked for with --python cannot be found or does not run."""


@dataclass(frozen=True)
class Interpreter:
    """A Python to build a virtualenv from: its version ("3.13") and its real executable."""

    version: str
    executable: Path

    @classmethod
    def running(cls) -> Interpreter:
        return cls(f"{sys.version_info.major}.{sys.version_info.minor}", Path(sys.executable).resolve())

    @classmethod
    def probe(cls, command: str | Path) -> Interpreter | None:
        """Run ``command`` as Python and ask it what it is; None if it does not run
        (a pyenv shim for a version pyenv has not selected exits with an error)."""
        try:
            done = subprocess.run([str(command), "-c", PROBE], check=False, capture_output=True, text=True, timeout=60)
        except OSError:
            return None
        if done.returncode != 0:
            return None
        version, executable = done.stdout.split()
        return cls(version, Path(executable).resolve())

    @property
    def venv(self) -> Path:
        return ROOT / (".venv" if self == Interpreter.running() else f".venv-{self.version}")


def find_version(version: str) -> Interpreter:
    """The first Python ``version`` that runs: ``pythonX.Y`` in each PATH folder, then pyenv's versions."""
    running = Interpreter.running()
    if version == running.version:
        return running
    name = f"python{version}"
    candidates = [
        found
        for folder in os.environ.get("PATH", "").split(os.pathsep)
        if folder and (found := shutil.which(name, path=folder))
    ]
    pyenv_versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"), "versions")
    release_name = re.compile(rf"{re.escape(version)}\.\d+")
    releases = [path for path in pyenv_versions.glob(f"{version}.*") if release_name.fullmatch(path.name)]
    releases.sort(key=lambda path: int(path.name.rsplit(".", 1)[1]), reverse=True)
    candidates += [release / "bin" / name for release in releases]
    for candidate in candidates:
        interpreter = Interpreter.probe(candidate)
        if interpreter is not None and interpreter.version == version:
            return interpreter
    raise InterpreterNotFoundError(
        f"no Python {version} found: {name} is not on PATH (or does not run), "
        f"and pyenv has no {version}.N in {pyenv_versions}"
    )


def find_interpreter(requested: str | None) -> Interpreter:
    """The Python that --python names: nothing (the one running dev.py), a version, or a path or command."""
    if requested is None:
        return Interpreter.running()
    if VERSION.fullmatch(requested):
        return find_version(requested)
    command = shutil.which(requested) or requested
    interpreter = Interpreter.probe(command)
    if interpreter is None:
        raise InterpreterNotFoundError(f"--python {requested}: not a Python that runs")
    return interpreter


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(interpreter: Interpreter) -> Path:
    """The virtualenv's python, with the requirements installed; built or refilled only when needed."""
    venv = interpreter.venv
    stamp = venv / "dev.py.stamp"  # the requirements' digest and the interpreter the venv was built from
    requirements = hashlib.sha256(b"".join(path.read_bytes() for path in REQUIREMENTS)).hexdigest()
    wanted = f"{requirements} {interpreter.executable}"
    python = venv_python(venv)
    recorded = stamp.read_text() if stamp.exists() else ""
    if python.exists() and recorded == wanted:
        return python
    if not python.exists() or not recorded.endswith(f" {interpreter.executable}"):
        print(f"creating {venv.name} with Python {interpreter.version} ({interpreter.executable})", file=sys.stderr)
        subprocess.run([str(interpreter.executable), "-m", "venv", "--clear", str(venv)], check=True)
    print(f"installing requirements-dev.txt into {venv.name}", file=sys.stderr)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", "requirements-dev.txt"],
        cwd=ROOT,
        check=True,
    )
    stamp.write_text(wanted)
    return python


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="dev.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after the command go to it; `--` passes the rest as they are (`dev.py test -- --help`).",
        allow_abbrev=False,
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        command = commands.add_parser(
            name,
            help=summary,
            description=summary,
            usage=f"dev.py {name} [-h] [--python VERSION|PATH]{' [--fast]' if name == 'test' else ''} [ARGS ...]",
            allow_abbrev=False,
        )
        command.add_argument(
            "--python",
            metavar="VERSION|PATH",
            help="the Python to use: a version such as 3.13 (python3.13 on PATH, or pyenv's), or an interpreter's "
            "path; its virtualenv is .venv-VERSION. Default: the Python running dev.py, in .venv",
        )
        if name == "test":
            command.add_argument(
                "--fast",
                action="store_true",
                help=f"leave out the slow parts (tests marked {', '.join(FAST_LEAVES_OUT)}); "
                "without it, the whole suite runs",
            )
    return top


def main(argv: list[str]) -> int:
    options, rest = parser().parse_known_args(argv)
    if "--" in rest:
        rest.remove("--")
    try:
        interpreter = find_interpreter(options.python)
    except InterpreterNotFoundError as error:
        print(f"dev.py: error: {error}", file=sys.stderr)
        return 2
    python = ensure_venv(interpreter)
    if getattr(options, "fast", False):
        rest = ["-m", f"not ({' or '.join(FAST_LEAVES_OUT)})", *rest]
    command = [str(python), *COMMANDS[options.command][0], *rest]
    os.chdir(ROOT)
    if os.name == "nt":
        return subprocess.call(command)
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
