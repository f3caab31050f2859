"""Building one image step on a worker host: a build container on the parent image, then a
manifest of what the step changed.

- `base`: the Debian root file system from debootstrap, packed whole.
- `registry`: an image pulled over the OCI distribution API, packed whole.
- `run`: each command in its own build container, in order, on one writable layer; the
  containers share the host's network (steps download packages) and its resolver config.
- `copy`: a tar of the user's local files unpacked at a path of the image.
- `function`: a pickled function called in a build container; what it writes stays.
- `config`: environment and working directory; the file tree stays (but for a new workdir).

A step that fails raises `ImageBuildError` naming the step's command and the tail of its
output, and stores nothing: only a step that succeeds publishes an image.
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import shutil
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ember.builder.base import ensure_base_image
from ember.builder.publish import publish
from ember.builder.registry import pull_image
from ember.container import overlay
from ember.container.runtime import BindMount, ContainerConfig, Runtime
from ember.errors import ExecutionError, InvalidError
from ember.imagefs import manifest
from ember.imagefs.client import ImageFSClient, PreparedImage
from ember.imagefs.manifest import DIR, Entry, ImageConfig, Manifest
from ember.imagefs.pack import pack_tree
from ember.imagefs.store import ChunkStore
from ember.proto import api_pb2

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_CONFIG = ImageConfig(env={"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}, workdir="/root")

# Build steps download through the host's network, so they trust what the host trusts: its CA
# bundle (which may hold a company proxy's certificate) is mounted beside the image's own and
# named by the variables that pip, uv, requests, curl and OpenSSL read.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_CA_INSIDE = "/run/ember-build-ca/ca-certificates.crt"
_CA_VARIABLES = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

_TAIL_LINES = 30
_POLL_S = 0.1
_FUNCTION_PATH = "/run/ember-build/function.pkl"
_RUN_FUNCTION = (
    "import cloudpickle, sys; "
    f"function = cloudpickle.load(open({_FUNCTION_PATH!r}, 'rb')); function()"
)


class ImageBuildError(ExecutionError):
    """A build step failed; the message names the step and ends with its output."""


@dataclass
class BuildHost:
    """What a build needs from the host it runs on."""

    runtime: Runtime
    imagefs: ImageFSClient
    store: ChunkStore
    work_dir: Path  # scratch space, on the file system of the runtime's state
    fetch_blob: Callable[[str], Awaitable[bytes]]  # the control plane's blobs (local files)
    ember_package: Path  # the compiled ember package (run_function needs cloudpickle)


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    size_bytes: int
    files: int


async def build_step(
    host: BuildHost,
    build_id: str,
    parent_id: str,
    step: api_pb2.ImageStep,
    output: Callable[[str], None],
) -> BuiltImage:
    scratch = host.work_dir / build_id
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        image = await _build(host, build_id, parent_id, step, output, scratch)
    finally:
        for mount_point in overlay.mounts_under(scratch):
            overlay.unmount(mount_point)
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    return BuiltImage(image.image_id, image.size, sum(1 for _ in image.files()))


async def _build(
    host: BuildHost,
    build_id: str,
    parent_id: str,
    step: api_pb2.ImageStep,
    output: Callable[[str], None],
    scratch: Path,
) -> Manifest:
    if step.kind == "base":
        root = await asyncio.to_thread(ensure_base_image, step.python_version or "3.11")
        return await _publish_tree(host, root, scratch, None, BASE_CONFIG, output)
    if step.kind == "registry":
        return await _registry(host, step, scratch, output)
    parent = await asyncio.to_thread(manifest.load, host.store, parent_id)
    if step.kind == "config":
        return await _config(host, parent_id, parent, step, scratch)
    prepared = await host.imagefs.prepare(parent_id)
    upper = scratch / "upper"
    upper.mkdir()
    if step.kind == "run":
        for number, command in enumerate(step.commands):
            output(f"RUN {command}\n")
            await _run(host, f"build-{build_id}-{number}", prepared, parent, upper, command, output)
    elif step.kind == "copy":
        data = await host.fetch_blob(step.blob_id)
        await asyncio.to_thread(_copy, prepared, upper, scratch, data, step.target)
    elif step.kind == "function":
        pickle_dir = scratch / "function"
        pickle_dir.mkdir()
        (pickle_dir / "function.pkl").write_bytes(await host.fetch_blob(step.blob_id))
        command = f"exec python3 -c {_shell_quote(_RUN_FUNCTION)}"
        mounts = (
            BindMount(pickle_dir, "/run/ember-build"),
            BindMount(host.ember_package, "/opt/ember/ember"),
        )
        output("running the image's build function\n")
        await _run(
            host,
            f"build-{build_id}-fn",
            prepared,
            parent,
            upper,
            command,
            output,
            mounts,
            extra_env={"PYTHONPATH": "/opt/ember"},
        )
    else:
        raise InvalidError(f"unknown image step kind {step.kind!r}")
    return await _publish_tree(host, upper, scratch, parent, parent.config, output)


async def _publish_tree(
    host: BuildHost,
    root: Path,
    scratch: Path,
    parent: Manifest | None,
    config: ImageConfig,
    output: Callable[[str], None],
) -> Manifest:
    def work() -> Manifest:
        image, stats = pack_tree(root, host.store, parent=parent, config=config, progress=output)
        output(
            f"stored {stats.files} files ({stats.bytes_read >> 20} MiB read, "
            f"{stats.chunks_uploaded} new chunks, {stats.bytes_uploaded >> 20} MiB uploaded)\n"
        )
        publish(image, host.store, scratch / "publish")
        return image

    return await asyncio.to_thread(work)


async def _registry(
    host: BuildHost, step: api_pb2.ImageStep, scratch: Path, output: Callable[[str], None]
) -> Manifest:
    root = scratch / "rootfs"
    root.mkdir()
    pulled = await asyncio.to_thread(
        pull_image,
        step.reference,
        root,
        username=step.registry_username or None,
        password=step.registry_password or None,
        progress=lambda line: output(line + "\n"),
    )
    env = {"PATH": DEFAULT_PATH} | pulled.env
    config = ImageConfig(env=env, workdir=pulled.workdir or "/")
    return await _publish_tree(host, root, scratch, None, config, output)


async def _config(
    host: BuildHost, parent_id: str, parent: Manifest, step: api_pb2.ImageStep, scratch: Path
) -> Manifest:
    workdir = step.workdir or parent.config.workdir
    config = replace(parent.config, env=parent.config.env | dict(step.env), workdir=workdir)
    entries = _with_directory(parent.entries, workdir)
    image = Manifest(entries, config)
    same_tree = parent_id if entries is parent.entries else ""
    await asyncio.to_thread(publish, image, host.store, scratch / "publish", same_tree_as=same_tree)
    return image


def _with_directory(entries: dict[str, Entry], path: str) -> dict[str, Entry]:
    """`entries` with the directory `path` and its parents (`mkdir -p`), or `entries` itself."""
    parts = [p for p in path.split("/") if p]
    missing = [
        "/".join(parts[: n + 1])
        for n in range(len(parts))
        if "/".join(parts[: n + 1]) not in entries
    ]
    if not missing:
        return entries
    added = {p: Entry(path=p, kind=DIR, mode=0o755) for p in missing}
    return entries | added


async def _run(
    host: BuildHost,
    container_id: str,
    prepared: PreparedImage,
    parent: Manifest,
    upper: Path,
    command: str,
    output: Callable[[str], None],
    mounts: tuple[BindMount, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> None:
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
    env |= parent.config.env | (extra_env or {})
    ca_bundle = Path(os.environ.get("EMBER_BUILD_CA_BUNDLE", HOST_CA_BUNDLE))
    if ca_bundle.is_file():
        mounts = (*mounts, BindMount(ca_bundle, _CA_INSIDE))
        env |= dict.fromkeys(_CA_VARIABLES, _CA_INSIDE)
    config = ContainerConfig(
        container_id=container_id,
        image_root=prepared.metadata,
        data_layers=prepared.data_layers,
        args=["/bin/sh", "-c", f"exec 2>&1\n{command}"],
        env=env,
        hostname="ember-build",
        cwd=parent.config.workdir or "/",
        mounts=(BindMount(Path("/etc/resolv.conf"), "/etc/resolv.conf"), *mounts),
        cpu=0,
        memory_mb=0,
        host_network=True,
        upper_dir=upper,
    )
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    await host.runtime.start(config)
    try:
        stdout, _ = host.runtime.log_paths(container_id)
        waiting = asyncio.ensure_future(host.runtime.wait(container_id))
        with stdout.open("r", errors="replace") as log:
            while True:
                done = waiting.done()
                text = log.read()
                if text:
                    output(text)
                    tail.extend(text.splitlines())
                if done:
                    break
                await asyncio.sleep(_POLL_S)
        status = waiting.result()
    finally:
        await host.runtime.remove(container_id)
    if status.exit_code != 0:
        how = f"exit code {status.exit_code}" if status.exit_code is not None else "a signal"
        last = "\n".join(tail)
        raise ImageBuildError(f"Image build step failed: `{command}` ended with {how}.\n{last}")


def _copy(prepared: PreparedImage, upper: Path, scratch: Path, data: bytes, target: str) -> None:
    """Unpack the tar `data` at `target` in the image, through an overlay on the parent."""
    root = scratch / "root"
    work = scratch / "copy-work"
    root.mkdir()
    work.mkdir()
    overlay.mount_overlay(prepared.metadata, upper, work, root, data_layers=prepared.data_layers)
    try:
        destination = root / target.lstrip("/")
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                _extract_file(archive, member, destination)
    finally:
        overlay.unmount(root)
        shutil.rmtree(work, ignore_errors=True)


def _extract_file(archive: tarfile.TarFile, member: tarfile.TarInfo, destination: Path) -> None:
    """Write one regular file of the SDK's tar of local files (nothing else belongs there)."""
    relative = Path(member.name)
    if not member.isfile() or relative.is_absolute() or ".." in relative.parts:
        raise InvalidError(f"the local files' archive holds an unsafe entry: {member.name!r}")
    path = destination / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.is_dir():  # replace what the image had there
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    source = archive.extractfile(member)
    assert source is not None
    with source, open(path, "wb") as file:
        shutil.copyfileobj(source, file)
    os.chmod(path, member.mode)
    os.utime(path, (member.mtime, member.mtime))


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
