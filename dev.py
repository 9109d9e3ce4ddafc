"""Set up the project's virtualenv if needed, then run the app, the tests or the benchmark.

    python3 dev.py run      # the app on http://127.0.0.1:8080 (PORT overrides), on the SDK's stubs
    python3 dev.py test     # the whole test suite; extra arguments go to pytest
    python3 dev.py bench    # the benchmark; extra arguments go to `python -m bench`

Needs only Python 3.11+. The virtualenv lives in .venv and is reinstalled when
requirements-dev.txt (or requirements.txt) changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
REQUIREMENTS = [ROOT / "requirements.txt", ROOT / "requirements-dev.txt"]
STAMP = VENV / "requirements.sha256"
COMMANDS = {
    "run": ["main.py"],
    "test": ["-m", "pytest"],
    "bench": ["-m", "bench"],
}


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv() -> Path:
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in REQUIREMENTS)).hexdigest()
    python = venv_python()
    if python.exists() and STAMP.exists() and STAMP.read_text() == digest:
        return python
    if not python.exists():
        print(f"creating {VENV}", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    print("installing requirements-dev.txt into .venv", file=sys.stderr)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", "requirements-dev.txt"],
        cwd=ROOT,
        check=True,
    )
    STAMP.write_text(digest)
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    python = ensure_venv()
    command = [str(python), *COMMANDS[argv[0]], *argv[1:]]
    os.chdir(ROOT)
    if os.name == "nt":
        return subprocess.call(command)
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
