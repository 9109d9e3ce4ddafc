"""The Cloud SDK's tools, for the tests that need them (dev_appserver.py, the cron
schedule grammar, which only the SDK's Python can load, and gcloud's upload list).

Absent on a user's machine: those tests skip; under CI=true they fail.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tests.support.processes import skip_or_fail_in_ci


@dataclass(frozen=True)
class CloudSdk:
    root: Path

    @property
    def python(self) -> Path:
        """The Python the SDK bundles to run its tools (CLOUDSDK_PYTHON)."""
        return self.root / "platform" / "bundledpythonunix" / "bin" / "python3"

    @property
    def app_engine(self) -> Path:
        """dev_appserver's own App Engine SDK (its ``google.appengine`` package and libraries)."""
        return self.root / "platform" / "google_appengine"


@cache
def _find_cloud_sdk() -> CloudSdk | str:
    if shutil.which("dev_appserver.py") is None or (gcloud := shutil.which("gcloud")) is None:
        return "the Cloud SDK's dev_appserver.py is not installed (gcloud component app-engine-python)"
    info = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True, text=True, check=True
    )
    sdk = CloudSdk(Path(info.stdout.strip()))
    if not sdk.python.exists():
        return f"the Cloud SDK at {sdk.root} has no bundled Python to run dev_appserver.py"
    return sdk


def cloud_sdk() -> CloudSdk:
    """The installed Cloud SDK with dev_appserver.py; skips (fails under CI) without one."""
    found = _find_cloud_sdk()
    if isinstance(found, str):
        skip_or_fail_in_ci(found)
    return found


def gcloud() -> str:
    """The installed gcloud command; skips (fails under CI) without one."""
    found = shutil.which("gcloud")
    if found is None:
        skip_or_fail_in_ci("the Cloud SDK's gcloud is not installed")
    return found


def files_for_upload(app_dir: Path) -> set[str]:
    """The files under ``app_dir`` that `gcloud app deploy` would upload (its .gcloudignore
    applied), relative to it; listed offline."""
    listed = subprocess.run(
        [gcloud(), "meta", "list-files-for-upload", str(app_dir)], capture_output=True, text=True, check=True
    )
    return set(listed.stdout.splitlines())


def copy_upload(app_dir: Path, destination: Path) -> None:
    """Copy what `gcloud app deploy` would upload from ``app_dir`` into ``destination``."""
    for name in files_for_upload(app_dir):
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(app_dir / name, destination / name)
