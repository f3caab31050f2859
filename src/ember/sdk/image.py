"""`ember.Image`: a container image defined in code, as a chain of build steps.

    image = (
        ember.Image.debian_slim(python_version="3.11")
        .apt_install("curl")
        .pip_install("numpy<3")
        .env({"MODEL_DIR": "/models"})
        .add_local_dir("./assets", "/assets")
    )

    @app.function(image=image)
    def f(): ...

Each method returns a new image one step longer; nothing runs until an app that uses the image
runs or deploys. Then the control plane builds the steps it has not built before, on a worker, and
streams their output here. Local files enter the image by content: an unchanged file leaves the
step a cache hit, a changed one rebuilds from that step on.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ember import errors
from ember.sdk.value import Value

if TYPE_CHECKING:
    from pathlib import Path

    from ember.client import Connection
    from ember.proto import api_pb2

PythonVersions = ("3.11", "3.13")


class _Step(Value):
    """One build step as the user wrote it; local files and functions are read when it builds."""

    __slots__ = (
        "commands",
        "env",
        "force_build",
        "function",
        "ignore",
        "kind",
        "password",
        "python_version",
        "reference",
        "sources",
        "target",
        "username",
        "workdir",
    )

    def __init__(
        self,
        kind: str,
        *,
        python_version: str = "",
        reference: str = "",
        username: str = "",
        password: str = "",
        commands: tuple[str, ...] = (),
        env: tuple[tuple[str, str], ...] = (),
        workdir: str = "",
        target: str = "",
        # copy: (local file or folder, its path inside the target; "" for a folder's contents)
        sources: tuple[tuple[Path, str], ...] = (),
        ignore: tuple[str, ...] = (),  # copy: names skipped in local folders
        function: Callable[..., Any] | None = None,
        force_build: bool = False,
    ) -> None:
        self.kind = kind
        self.python_version = python_version
        self.reference = reference
        self.username = username
        self.password = password
        self.commands = commands
        self.env = env
        self.workdir = workdir
        self.target = target
        self.sources = sources
        self.ignore = ignore
        self.function = function
        self.force_build = force_build


class Image(Value):
    """An image definition. Start with `Image.debian_slim()` or `Image.from_registry()`."""

    __slots__ = ("_steps",)

    def __init__(self, _steps: tuple[_Step, ...] = ()) -> None:
        self._steps = _steps

    def __repr__(self) -> str:
        return f"<ember.Image {len(self._steps)} steps>"

    # ---- starting points

    @staticmethod
    def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
        """Debian with Python (3.11 on bookworm, 3.13 on trixie), pip, and what ember needs."""
        version = python_version or "3.11"
        if version not in PythonVersions:
            raise errors.InvalidError(
                f"debian_slim has no Python {version!r}; use one of {', '.join(PythonVersions)}"
            )
        return Image((_Step("base", python_version=version, force_build=force_build),))

    @staticmethod
    def from_registry(
        tag: str,
        *,
        username: str | None = None,
        password: str | None = None,
        force_build: bool = False,
    ) -> Image:
        """An image from a container registry ("python:3.11-slim", "host:5000/team/app:v2").
        It needs `python3` on its PATH; ember brings its own runtime's other requirements."""
        if not tag or any(c.isspace() for c in tag):
            raise errors.InvalidError(f"invalid image reference {tag!r}")
        step = _Step(
            "registry",
            reference=tag,
            username=username or "",
            password=password or "",
            force_build=force_build,
        )
        return Image((step,))

    @staticmethod
    def from_dockerfile(
        path: str | os.PathLike[str],
        context_dir: str | os.PathLike[str] | None = None,
        force_build: bool = False,
    ) -> Image:
        """An image from a Dockerfile's common instructions (FROM, RUN, ENV, WORKDIR, COPY/ADD
        of local files, ARG); COPY sources are relative to `context_dir` (default: its folder)."""
        from pathlib import Path

        from ember.sdk.dockerfile import image_from_dockerfile

        return image_from_dockerfile(Path(path), context_dir and Path(context_dir), force_build)

    # ---- steps

    def _then(self, step: _Step) -> Image:
        return Image((*self._steps, step))

    def run_commands(self, *commands: str | Sequence[str], force_build: bool = False) -> Image:
        """Run shell commands in the image, in order (with network access)."""
        flat = tuple(_flatten(commands))
        if not flat:
            return self
        return self._then(_Step("run", commands=flat, force_build=force_build))

    def apt_install(self, *packages: str | Sequence[str], force_build: bool = False) -> Image:
        names = " ".join(shlex.quote(p) for p in _flatten(packages))
        if not names:
            return self
        command = f"apt-get update -q && apt-get install -y -q --no-install-recommends {names}"
        return self.run_commands(command, force_build=force_build)

    def pip_install(
        self,
        *packages: str | Sequence[str],
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
    ) -> Image:
        """`pip install` packages ("numpy<3", "torch==2.13.0") into the image's Python."""
        names = [shlex.quote(p) for p in _flatten(packages)]
        if not names:
            return self
        options = _pip_options(find_links, index_url, extra_index_url, pre, extra_options)
        command = " ".join(["python3 -m pip install --no-cache-dir", *options, *names])
        return self.run_commands(command, force_build=force_build)

    def uv_pip_install(
        self,
        *packages: str | Sequence[str],
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
    ) -> Image:
        """Install packages with uv (installed into the image first): faster for large sets."""
        names = [shlex.quote(p) for p in _flatten(packages)]
        if not names:
            return self
        options = _pip_options(find_links, index_url, extra_index_url, pre, extra_options)
        install_uv = "python3 -m pip install --no-cache-dir -q uv"
        install = " ".join(["uv pip install --system --no-cache", *options, *names])
        return self.run_commands(f"{install_uv} && {install}", force_build=force_build)

    def pip_install_from_requirements(
        self,
        requirements_txt: str | os.PathLike[str],
        find_links: str | None = None,
        *,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
    ) -> Image:
        """`pip install -r` a local requirements file (copied into the image first)."""
        from pathlib import Path

        local = Path(requirements_txt).expanduser()
        if not _in_container() and not local.is_file():
            raise errors.InvalidError(f"requirements file {str(local)!r} not found")
        inside = "/tmp/ember-requirements.txt"
        options = _pip_options(find_links, index_url, extra_index_url, pre, extra_options)
        command = " ".join(
            ["python3 -m pip install --no-cache-dir", *options, "-r", inside, f"&& rm {inside}"]
        )
        copied = self.add_local_file(local, inside, force_build=force_build)
        return copied.run_commands(command, force_build=force_build)

    def env(self, vars: dict[str, str], force_build: bool = False) -> Image:
        """Set environment variables for the steps after this one and for the containers."""
        bad = [k for k, v in vars.items() if not isinstance(v, str) or not k or "=" in k]
        if bad:
            raise errors.InvalidError(f"env() takes str names and values; check {bad!r}")
        return self._then(_Step("config", env=tuple(sorted(vars.items())), force_build=force_build))

    def workdir(self, path: str | os.PathLike[str], force_build: bool = False) -> Image:
        """The working directory of later steps and of the containers (made if missing)."""
        text = str(path)
        if not text.startswith("/"):
            raise errors.InvalidError(f"workdir needs an absolute path; got {text!r}")
        return self._then(_Step("config", workdir=text, force_build=force_build))

    def run_function(self, raw_f: Callable[[], Any], force_build: bool = False) -> Image:
        """Call `raw_f()` in the image at build time; the files it writes are part of the image
        (download model weights here). It must be importable or picklable by value."""
        if not callable(raw_f):
            raise errors.InvalidError(f"run_function needs a function; got {raw_f!r}")
        return self._then(_Step("function", function=raw_f, force_build=force_build))

    def add_local_file(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        copy: bool = True,
        force_build: bool = False,
    ) -> Image:
        """Put a local file into the image at `remote_path` (a path ending in / is a folder)."""
        from pathlib import Path

        local = Path(local_path).expanduser()
        if not _in_container() and not local.is_file():
            raise errors.InvalidError(f"local file {str(local)!r} not found")
        if not remote_path.startswith("/"):
            raise errors.InvalidError(f"remote_path must be absolute; got {remote_path!r}")
        if remote_path.endswith("/"):
            remote_path += local.name
        folder, name = remote_path.rsplit("/", 1)
        step = _Step(
            "copy", target=folder or "/", sources=((local, name),), force_build=force_build
        )
        return self._then(step)

    def add_local_dir(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        copy: bool = True,
        ignore: Sequence[str] = ("__pycache__", ".git"),
        force_build: bool = False,
    ) -> Image:
        """Put a local folder's contents into the image at `remote_path`."""
        from pathlib import Path

        local = Path(local_path).expanduser()
        if not _in_container() and not local.is_dir():
            raise errors.InvalidError(f"local folder {str(local)!r} not found")
        if not remote_path.startswith("/"):
            raise errors.InvalidError(f"remote_path must be absolute; got {remote_path!r}")
        step = _Step(
            "copy",
            target=remote_path,
            sources=((local, ""),),
            ignore=tuple(ignore),
            force_build=force_build,
        )
        return self._then(step)

    def add_local_python_source(self, *modules: str, copy: bool = True) -> Image:
        """Put local Python modules or packages into the image's /root, which is importable."""
        import importlib.util
        from pathlib import Path

        image = self
        for module in modules:
            spec = importlib.util.find_spec(module)
            if spec is None or spec.origin is None:
                if _in_container():  # another image's module: this container has no use for it
                    continue
                raise errors.InvalidError(f"no local Python module or package named {module!r}")
            origin = Path(spec.origin)
            if spec.submodule_search_locations:  # a package: its whole folder
                image = image.add_local_dir(origin.parent, f"/root/{module}")
            else:
                image = image.add_local_file(origin, f"/root/{origin.name}")
        return image

    # ---- in user code

    @contextlib.contextmanager
    def imports(self) -> Iterator[None]:
        """Import the image's packages at module level without having them locally:

            with image.imports():
                import torch

        A failed import is skipped, except in a container of this very image.
        """
        try:
            yield
        except ImportError:
            # Inside a container of another image of the app, this image's packages are absent.
            if _in_container() and os.environ.get("EMBER_IMAGE_KEY") == self.definition_key():
                raise

    def definition_key(self) -> str:
        """A digest of how the image is defined (not of local files' content), the same on the
        machine that defines it and in its containers: it tells `imports()` where it runs."""
        import hashlib  # not blake3: this runs in containers, where only the stdlib is sure
        import json

        shape = [
            [
                s.kind,
                s.python_version,
                s.reference,
                list(s.commands),
                list(s.env),
                s.workdir,
                s.target,
                [name for _, name in s.sources],
                getattr(s.function, "__qualname__", ""),
            ]
            for s in self._steps
        ]
        return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:32]

    # ---- building

    async def _build(self, conn: Connection, show: Callable[[str], None] | None) -> str:
        """Build what is not built yet (on the cluster); returns the image id."""
        import grpc

        from ember.client.connection import error_from_rpc
        from ember.proto import api_pb2

        if not self._steps:
            raise errors.InvalidError("an empty Image; start with Image.debian_slim()")
        # Local files and functions go by digest first: an unchanged image uploads nothing.
        for with_blobs in (False, True):
            steps = [await _step_proto(conn, step, with_blobs) for step in self._steps]
            request = api_pb2.ImageBuildRequest(steps=steps)
            needs_blobs = False
            try:
                async for event in conn.ember.ImageBuild(request):
                    kind = event.WhichOneof("event")
                    if kind == "built":
                        return event.built.image_id
                    needs_blobs = needs_blobs or event.needs_blobs
                    if show is not None and kind == "step_started":
                        show(f"{event.step_started}{' (cached)' if event.cached else ''}\n")
                    elif show is not None and kind == "output":
                        show(event.output)
            except grpc.aio.AioRpcError as error:
                raise error_from_rpc(error) from None
            if not needs_blobs:
                break
        raise errors.ExecutionError("the image build ended without an image")


async def _step_proto(conn: Connection, step: _Step, with_blobs: bool) -> api_pb2.ImageStep:
    from ember.client.blobs import upload
    from ember.proto import api_pb2

    message = api_pb2.ImageStep(
        kind=step.kind,
        python_version=step.python_version,
        reference=step.reference,
        registry_username=step.username,
        registry_password=step.password,
        commands=list(step.commands),
        env=dict(step.env),
        workdir=step.workdir,
        target=step.target,
        force_build=step.force_build,
    )
    if step.kind == "copy":
        files = [
            pair
            for local, name in step.sources
            for pair in (_files_under(local, set(step.ignore)) if not name else [(local, name)])
        ]
        message.content_digest = _digest_files(files)
        if with_blobs:
            message.blob_id = await upload(conn, _tar_files(files))
    elif step.kind == "function":
        import blake3

        data = _pickle_by_value(step.function)
        message.content_digest = blake3.blake3(data).hexdigest()
        if with_blobs:
            message.blob_id = await upload(conn, data)
    return message


def _pickle_by_value(function: Callable[..., Any]) -> bytes:
    """Pickle a build function with its own module's code by value: the build container has the
    image's packages but not the app's files."""
    import sys

    import cloudpickle

    module = sys.modules.get(function.__module__)
    origin = getattr(module, "__file__", None) or ""
    installed = "site-packages" in origin or "dist-packages" in origin
    if module is None or installed or function.__module__ == "__main__":
        return cloudpickle.dumps(function)
    cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(function)
    finally:
        cloudpickle.unregister_pickle_by_value(module)


# (path, size, mtime) -> digest: a process that builds an image again reads no unchanged file.
_file_digests: dict[tuple[str, int, int], str] = {}


def _digest_files(files: list[tuple[Path, str]]) -> str:
    """A digest of the files' names, modes and content (not their times: touching a file does
    not rebuild)."""
    import blake3

    hasher = blake3.blake3()
    for local, name in sorted(files, key=lambda pair: pair[1]):
        st = local.stat()
        key = (str(local), st.st_size, st.st_mtime_ns)
        if key not in _file_digests:
            file_hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            if st.st_size:  # mmap refuses empty files
                file_hasher.update_mmap(local)
            _file_digests[key] = file_hasher.hexdigest()
        hasher.update(
            f"{name}\0{st.st_mode & 0o7777}\0{st.st_size}\0{_file_digests[key]}\0".encode()
        )
    return hasher.hexdigest()


def _tar_files(files: list[tuple[Path, str]]) -> bytes:
    """A tar of regular files only, which is all the worker takes: each with the content, mode
    and time of the file its path opens (a symlink the user named gives what it names), owned
    by root, never a link entry (not even for a file that appears under two names)."""
    import io
    import stat
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for local, name in sorted(files, key=lambda pair: pair[1]):
            with local.open("rb") as file:
                st = os.fstat(file.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise errors.InvalidError(f"{str(local)!r} is not a regular file to copy")
                info = tarfile.TarInfo(name)  # owner 0:0, no owner names
                info.size, info.mode, info.mtime = st.st_size, st.st_mode & 0o7777, st.st_mtime
                archive.addfile(info, file)
    return buffer.getvalue()


def _files_under(root: Path, ignore: set[str]) -> Iterator[tuple[Path, str]]:
    """The regular files in the local folder `root`: the path to read each from, and its name
    below the folder, skipping `ignore`d names.

    A symlink stands for what it names when that lies inside the folder (the image gets a copy,
    as the worker takes only regular files). One that names anything outside the folder is
    refused: a link in a project (to ~/.ssh, to /etc) must never carry into the image a file the
    user did not put in the folder they named. A dangling one names no file, so it is skipped.
    """
    base = root.resolve()
    yield from _walk_folder(root, base, base, "", ignore, frozenset([base]))


def _walk_folder(
    root: Path,
    base: Path,
    directory: Path,
    prefix: str,
    ignore: set[str],
    above: frozenset[Path],
) -> Iterator[tuple[Path, str]]:
    """`_files_under` for the real folder `directory`, named `prefix` below `root` (whose real
    path is `base`); `above` holds the real folders being walked, to stop a link loop."""
    from pathlib import Path

    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.name in ignore:
            continue
        name = f"{prefix}{entry.name}"
        path = Path(entry.path)
        if entry.is_symlink():
            try:
                path = path.resolve(strict=True)
            except (OSError, RuntimeError):  # dangling, or a loop of links: no file to copy
                continue
            if not path.is_relative_to(base):
                raise errors.InvalidError(
                    f"local folder {str(root)!r} holds the symlink {name!r}, which points "
                    f"outside it (to {str(path)!r}); only what is inside the folder is copied: "
                    f"copy what it names into the folder, or leave the link out by adding "
                    f"{entry.name!r} to ignore="
                )
            if path in above:
                raise errors.InvalidError(
                    f"local folder {str(root)!r} holds the symlink {name!r}, which points to a "
                    f"folder that holds it, so copying it would never end: remove the link, "
                    f"or leave it out by adding {entry.name!r} to ignore="
                )
        if path.is_dir():
            yield from _walk_folder(root, base, path, f"{name}/", ignore, above | {path})
        elif path.is_file():
            yield path, name


def _in_container() -> bool:
    """Inside a function's container the app's module runs again, image definitions included,
    but the local files they name are not there: they are in the image already."""
    return bool(os.environ.get("EMBER_CONTAINER_ID"))


def _flatten(items: Sequence[str | Sequence[str]]) -> Iterator[str]:
    for item in items:
        if isinstance(item, str):
            yield item
        else:
            yield from _flatten(item)


def _pip_options(
    find_links: str | None,
    index_url: str | None,
    extra_index_url: str | None,
    pre: bool,
    extra_options: str,
) -> list[str]:
    options = []
    if find_links:
        options += ["--find-links", shlex.quote(find_links)]
    if index_url:
        options += ["--index-url", shlex.quote(index_url)]
    if extra_index_url:
        options += ["--extra-index-url", shlex.quote(extra_index_url)]
    if pre:
        options.append("--pre")
    if extra_options:
        options.append(extra_options)
    return options
