"""Every test session gets its own ember data directory, so it never touches a user's cluster,
while built images are shared with the machine's cache (the base image is built once)."""

import os
import shutil
import tempfile
from pathlib import Path

_session_dir = tempfile.mkdtemp(prefix="ember-tests-")
os.environ.setdefault("EMBER_IMAGE_DIR", str(Path("~/.local/share/ember/images").expanduser()))
os.environ["EMBER_DATA_DIR"] = _session_dir
os.environ.pop("EMBER_SERVER_URL", None)


def pytest_sessionfinish() -> None:
    shutil.rmtree(_session_dir, ignore_errors=True)
