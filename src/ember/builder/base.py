"""The ember base image: a Debian root file system with Python and the harness's requirements.

Every container runs on this tree for now (images defined in code will build on it). It is built
once per machine with
debootstrap into `image_dir()/base-<key>/rootfs` and reused afterwards. The key changes
whenever its contents would (suite, packages, cloudpickle version, BASE_FORMAT), so an upgrade of
any of them builds a fresh image beside the old one instead of patching it.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.status import Status

from ember.config import image_dir
from ember.container import overlay
from ember.errors import ExecutionError, InvalidError

# Bump when the way the image is made changes, so machines rebuild instead of reusing old trees.
BASE_FORMAT = 1

# Python version -> the Debian suite whose python3 is that version.
SUITES = {"3.11": "bookworm", "3.13": "trixie"}

PACKAGES = ("python3", "python3-pip")

DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Large and never read by a container. apt lists come back with `apt-get update` in a build step.
_STRIPPED = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)

_OUTPUT_TAIL_LINES = 20

# Per process: the image is looked up on every container start, so a hit must not touch the disk.
_built: dict[tuple[str, Path], Path] = {}


def ensure_base_image(python_version: str = "3.11", *, console: Console | None = None) -> Path:
    """Return the base image's root file system directory, building it first if needed.

    Building takes about a minute and happens once per machine and key; concurrent callers (in
    any process) wait for one build and then share it. Progress goes to `console`, or to a new
    console when stdout is a terminal, and nowhere otherwise.
    """
    images = image_dir()
    cached = _built.get((python_version, images))
    if cached is not None:
        return cached

    suite = SUITES.get(python_version)
    if suite is None:
        supported = ", ".join(sorted(SUITES))
        raise InvalidError(
            f"Python {python_version!r} has no ember base image; use one of: {supported}."
        )
    cloudpickle = importlib.metadata.distribution("cloudpickle")
    key = _image_key(suite, cloudpickle.version)
    final = images / f"base-{key}"
    rootfs = final / "rootfs"
    if not rootfs.is_dir():
        images.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(images / f"base-{key}.lock"):
            # Another process may have finished the build while this one waited for the lock.
            if not rootfs.is_dir():
                if console is None and sys.stdout is not None and sys.stdout.isatty():
                    console = Console()
                _build(final, suite, python_version, cloudpickle, console)
    _built[(python_version, images)] = rootfs
    return rootfs


def _image_key(suite: str, cloudpickle_version: str) -> str:
    material = json.dumps([suite, PACKAGES, cloudpickle_version, BASE_FORMAT])
    return hashlib.sha256(material.encode()).hexdigest()[:12]


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _build(
    final: Path,
    suite: str,
    python_version: str,
    cloudpickle: importlib.metadata.Distribution,
    console: Console | None,
) -> None:
    partial = final.with_name(final.name + ".partial")
    _remove_tree(partial)  # left by a build that died; we hold the lock, so nobody else uses it
    rootfs = partial / "rootfs"
    rootfs.mkdir(parents=True)

    try:
        _build_into(rootfs, suite, python_version, cloudpickle, console)
    except BaseException:
        _remove_tree(partial)
        raise
    os.rename(partial, final)
    if console:
        console.print(
            f"[green]✓[/green] Built the ember base image ({suite}, Python {python_version})"
        )


def _build_into(
    rootfs: Path,
    suite: str,
    python_version: str,
    cloudpickle: importlib.metadata.Distribution,
    console: Console | None,
) -> None:
    status = console.status("Building the ember base image") if console else None
    with status or contextlib.nullcontext():
        _debootstrap(suite, rootfs, status)
        if status:
            status.update("Installing cloudpickle into the base image")
        site_packages = rootfs / f"usr/local/lib/python{python_version}/dist-packages"
        _install_distribution(cloudpickle, site_packages)
        # Compile now with the image's own interpreter, so no container pays for it at import.
        inside = "/" + str(site_packages.relative_to(rootfs))
        _run_checked(
            ["chroot", str(rootfs), "python3", "-m", "compileall", "-q", inside],
            "compiling cloudpickle in the base image",
        )
        for relative in _STRIPPED:
            _empty_directory(rootfs / relative)
        # The image is the user's to install into: `pip install` as Modal's images allow.
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        _write_host_files(rootfs)


def _debootstrap(suite: str, rootfs: Path, status: Status | None) -> None:
    mirror = os.environ.get("EMBER_DEBIAN_MIRROR", DEFAULT_MIRROR)
    command = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        suite,
        str(rootfs),
        mirror,
    ]
    tail: collections.deque[str] = collections.deque(maxlen=_OUTPUT_TAIL_LINES)
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except FileNotFoundError:
        raise ExecutionError(
            "debootstrap is not installed; install it (apt-get install debootstrap) to build "
            "the ember base image."
        ) from None
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            if status is not None and line.startswith("I: "):
                status.update(f"Building the ember base image: {line[3:]}")
    if process.returncode != 0:
        output = "\n".join(tail)
        raise ExecutionError(
            f"debootstrap {suite} from {mirror} failed with exit code {process.returncode}; "
            f"set EMBER_DEBIAN_MIRROR to use another mirror. Last output:\n{output}"
        )


def _install_distribution(
    distribution: importlib.metadata.Distribution, site_packages: Path
) -> None:
    """Copy an installed distribution's files (code and metadata, not bytecode) into a site dir."""
    for file in distribution.files or ():
        if file.suffix == ".pyc" or ".." in file.parts:
            continue  # bytecode is compiled for the image's Python; `..` entries are scripts
        target = site_packages / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(distribution.locate_file(file), target)


def _write_host_files(rootfs: Path) -> None:
    # debootstrap copies the build host's name; each container gets its own from the runtime.
    (rootfs / "etc/hostname").unlink(missing_ok=True)
    (rootfs / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )


def _run_checked(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if result.returncode != 0:
        raise ExecutionError(f"{what} failed: {result.stdout}{result.stderr}")


def _empty_directory(path: Path) -> None:
    if not path.is_dir() or path.is_symlink():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    # debootstrap mounts /proc and /sys inside the target while it runs; a killed build can leave
    # them, and deleting through them would reach the host's.
    for mount_point in overlay.mounts_under(path):
        overlay.unmount(mount_point)
    shutil.rmtree(path)
