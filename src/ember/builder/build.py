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
import contextlib
import io
import os
import shutil
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ember.builder import beneath
from ember.builder.base import ensure_base_image
from ember.builder.beneath import UnsafePath
from ember.builder.publish import publish
from ember.builder.registry import pull_image
from ember.container import disk, overlay
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

# How much a build step may write: its commands share one writable layer of this size.
BUILD_DISK_MB = 64 << 10

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
    # The step's writable layer, shared by its commands, on a disk of its own like a
    # container's (unmounted with everything else under `scratch` when the step ends).
    disk_dir = scratch / "disk"
    disk_dir.mkdir()
    await disk.make_disk(scratch / "disk.img", disk_dir, BUILD_DISK_MB, host.work_dir / "disks")
    upper = disk_dir / "upper"
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
    # Build containers wrote as their root, a host id of the runtime's range: the image's root.
    owner = host.runtime.ids.to_image
    return await _publish_tree(host, upper, scratch, parent, parent.config, output, owner)


async def _publish_tree(
    host: BuildHost,
    root: Path,
    scratch: Path,
    parent: Manifest | None,
    config: ImageConfig,
    output: Callable[[str], None],
    owner: Callable[[int], int] | None = None,
) -> Manifest:
    def work() -> Manifest:
        image, stats = pack_tree(
            root, host.store, parent=parent, config=config, progress=output, owner=owner
        )
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
    """Unpack the tar `data` at `target` in the image, through an overlay on the parent.

    The mount is a host path, where the host would follow the parent image's symlinks (an
    absolute one to the host's own directory), so every path is resolved inside the mounted
    root instead: a symlink of the image leads where it leads in a container (`/var/run -> /run`
    to the image's /run), and `..` stops at the image's root.
    """
    root = scratch / "root"
    work = upper.parent / "copy-work"  # overlay's work directory: on the upper's file system
    root.mkdir()
    work.mkdir()
    overlay.mount_overlay(prepared.metadata, upper, work, root, data_layers=prepared.data_layers)
    try:
        with (
            beneath.opened_root(root) as root_fd,
            tarfile.open(fileobj=io.BytesIO(data)) as archive,
        ):
            for member in [None, *archive.getmembers()]:  # None: the target, even if empty
                _extract_file(archive, member, root_fd, root, target)
    finally:
        overlay.unmount(root)
        shutil.rmtree(work, ignore_errors=True)


def _extract_file(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo | None,
    root_fd: int,
    root: Path,
    target: str,
) -> None:
    """Write one regular file of the SDK's tar of local files (nothing else belongs there) at
    `target` in the image mounted at `root` (`root_fd`), resolving each path inside the image;
    with `member` None, only make the folder `target`."""
    parts: list[str] = []
    if member is not None:
        try:
            if not member.isfile():
                raise UnsafePath("is not a regular file")
            parts = beneath.relative_parts(member.name, root / target.lstrip("/"))
            if not parts:
                raise UnsafePath("names no file")
        except UnsafePath as exc:
            raise InvalidError(
                f"the local files' archive holds an unsafe entry: {member.name!r} {exc} (only "
                "regular files below the target belong there, as the ember SDK sends them)"
            ) from None
    try:
        directory = beneath.open_directory(
            root_fd, [*target.split("/"), *parts[:-1]], create=True, follow_in_root=True
        )
    except UnsafePath as exc:
        what = "local files" if member is None else repr(member.name)
        raise InvalidError(
            f"cannot copy {what} to {target} in the image: the path {exc} in the image; "
            "copy to another folder, or remove what is in the way in a step before"
        ) from None
    assert directory is not None  # made if missing
    try:
        if member is None:
            return
        beneath.remove(directory, parts[-1])  # replace what the image had there, a link itself
        source = archive.extractfile(member)
        assert source is not None
        with source, os.fdopen(beneath.create_file(directory, parts[-1]), "wb") as file:
            shutil.copyfileobj(source, file)
            file.flush()  # before the time is set: a later write would move it
            os.fchmod(file.fileno(), member.mode & 0o7777)
            with contextlib.suppress(OverflowError, ValueError):  # a time the host cannot hold
                os.utime(file.fileno(), (member.mtime, member.mtime))
    finally:
        os.close(directory)


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
