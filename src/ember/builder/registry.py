"""Pull a container image from a registry and unpack it into a directory.

`Image.from_registry("python:3.11-slim")` builds on an image someone else published. This module
does the pull without Docker or containerd: it speaks the registry HTTP API (the OCI distribution
spec, which Docker Hub, GHCR, ECR, GCR and `docker-registry` all serve), resolves a multi-platform
index to the manifest for this machine, downloads each layer while checking its digest, and
applies the layers in order onto one directory with the overlay whiteout rules, so that the
directory ends up as the root file system the image describes. The image's config (environment,
working directory, entrypoint, command, user) comes back so containers start the way the image's
author meant.

Layers are unpacked by hand rather than with `tarfile.extractall`: whiteouts need their own rules,
absolute symlink targets (`/usr/bin/python3 -> /usr/bin/python3.11`) are normal in images while
tarfile's safety filters reject them, and no entry may write outside the directory, neither by
its name nor through a symlink an earlier entry made.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import httpx
import zstandard

from ember.errors import ExecutionError, InvalidError, NotFoundError

DOCKER_HUB = "registry-1.docker.io"
# Names people use for Docker Hub; the API itself lives on DOCKER_HUB.
_DOCKER_HUB_NAMES = {"docker.io", "index.docker.io", DOCKER_HUB}
# Registries on this machine serve plain HTTP, like Docker's built-in exception for them.
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]"}

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEX_TYPES = {OCI_INDEX, DOCKER_MANIFEST_LIST}
_MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
# Without every type in Accept, registries fall back to converting to Docker schema 1 (or refuse).
_MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
_CONFIG_TYPES = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}
# Layer media type -> compression. The non-distributable ("foreign") kinds are ordinary layers
# that some registries keep elsewhere; if the registry has them they unpack like the others.
_LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}

# The distribution spec lets registries refuse manifests over 4 MiB; configs are as small.
_MAX_DOCUMENT_BYTES = 4 << 20
# An index could point to another index; real images use one level, this bounds a loop.
_MAX_INDEX_DEPTH = 3
_CHUNK = 1 << 20
# Reads wait long: a registry may take a while to start sending a large blob from cold storage.
_TIMEOUT = httpx.Timeout(connect=15.0, read=120.0, write=60.0, pool=15.0)

_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}

# The grammar of Docker's reference parser (distribution/reference), enough to reject typos early.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"\w[\w.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d+)?")
_CHALLENGE_PARAM_RE = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')

_WHITEOUT_PREFIX = ".wh."
_OPAQUE_WHITEOUT = ".wh..wh..opq"
# Other `.wh..wh.` names are bookkeeping of Docker's old aufs driver, not image content.
_AUFS_META_PREFIX = ".wh..wh."


@dataclass(frozen=True)
class RegistryImageConfig:
    """What an image says about how to run it, from its config blob."""

    env: dict[str, str]
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    user: str


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference: where the image lives and which version of it."""

    registry: str  # host[:port] to connect to
    repository: str
    tag: str | None
    digest: str | None

    @property
    def version(self) -> str:
        """What to ask the registry for: the digest when given (it pins the content), else the tag."""
        return self.digest or self.tag or "latest"


def parse_reference(reference: str) -> ImageReference:
    """Parse `reference` the way Docker does (`python:3.11`, `ghcr.io/o/i:t`, `r:5000/a@sha256:…`)."""
    name, _, digest = reference.partition("@")
    if digest and not _DIGEST_RE.fullmatch(digest):
        raise InvalidError(f"image reference {reference!r} has a malformed digest {digest!r}")
    registry, path = _split_registry(name)
    path, tag = _split_tag(path)
    if not _HOST_RE.fullmatch(registry):
        raise InvalidError(f"image reference {reference!r} has a malformed registry {registry!r}")
    if not _REPOSITORY_RE.fullmatch(path):
        raise InvalidError(
            f"image reference {reference!r} has a malformed repository {path!r} "
            "(lowercase letters, digits and . _ - separators only)"
        )
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise InvalidError(f"image reference {reference!r} has a malformed tag {tag!r}")
    if tag is None and not digest:
        tag = "latest"
    return ImageReference(registry, path, tag, digest or None)


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    # Docker's rule: the first component names a registry only if it cannot be a user name.
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", name
    if registry in _DOCKER_HUB_NAMES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"  # official images live under library/
    return registry, path


def _split_tag(path: str) -> tuple[str, str | None]:
    head, colon, tag = path.rpartition(":")
    if colon and "/" not in tag:
        return head, tag
    return path, None


def registry_url(registry: str, *, insecure: bool = False) -> str:
    """The base URL of `registry`: plain HTTP for this machine or when `insecure`, else HTTPS."""
    if registry.startswith("["):
        host = registry[: registry.index("]") + 1]  # an IPv6 address keeps its brackets
    else:
        host = registry.partition(":")[0]
    scheme = "http" if insecure or host in _LOCAL_HOSTS else "https"
    return f"{scheme}://{registry}"


def pull_image(
    reference: str,
    dest: Path,
    *,
    username: str | None = None,
    password: str | None = None,
    insecure: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RegistryImageConfig:
    """Download `reference` and unpack its layers, in order, into the empty directory `dest`.

    `dest` is created if missing. On an error it is left partly filled; the caller removes it.
    `insecure` talks plain HTTP to the registry (for registries without TLS).
    """
    ref = parse_reference(reference)
    if (username is None) != (password is None):
        raise InvalidError("pass both username= and password= to pull an image, or neither")
    _prepare_destination(dest)
    report = progress or _ignore
    credentials = (username, password) if username is not None and password is not None else None
    with _Registry(ref, reference, credentials, insecure=insecure) as registry:
        try:
            manifest = _resolve_manifest(registry)
            config = _fetch_config(registry, manifest)
            _pull_layers(registry, manifest, dest, report)
        except httpx.RequestError as exc:
            raise ExecutionError(
                f"could not pull image {reference} from {ref.registry}: {exc}{_tls_hint(exc)}"
            ) from exc
    return config


def _ignore(_message: str) -> None:
    pass


def _tls_hint(exc: httpx.RequestError) -> str:
    if "ssl" in str(exc).lower() or "tls" in str(exc).lower():
        return " (if the registry serves plain HTTP, pass insecure=True)"
    return ""


def _prepare_destination(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InvalidError(f"cannot pull an image into {dest}: the directory is not empty")


# --- HTTP and authentication ---------------------------------------------------------------------


class _Registry:
    """One repository on one registry, with what it takes to be let in."""

    def __init__(
        self,
        ref: ImageReference,
        name: str,
        credentials: tuple[str, str] | None,
        *,
        insecure: bool,
    ) -> None:
        self.ref = ref
        self.name = name  # the reference as the user wrote it, for messages
        self.base = registry_url(ref.registry, insecure=insecure)
        self._credentials = credentials
        self._authorization: str | None = None
        # Redirects: blobs usually live in object storage the registry redirects to. httpx drops
        # the Authorization header when a redirect leaves the registry's origin, as it must.
        self.client = httpx.Client(timeout=_TIMEOUT, follow_redirects=True)

    def __enter__(self) -> _Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.close()

    @contextlib.contextmanager
    def get(self, path: str, accept: str | None = None) -> Iterator[httpx.Response]:
        """GET `path` under the repository, answering one auth challenge; the body streams."""
        url = f"{self.base}/v2/{self.ref.repository}/{path}"
        response = self._send(url, accept)
        if response.status_code == 401:
            # Also when a token expired during a long pull: a fresh one is fetched the same way.
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            self._authenticate(challenge)
            response = self._send(url, accept)
        try:
            self._check(response, path)
            yield response
        finally:
            response.close()

    def _send(self, url: str, accept: str | None) -> httpx.Response:
        headers = {}
        if accept:
            headers["Accept"] = accept
        if self._authorization:
            headers["Authorization"] = self._authorization
        return self.client.send(self.client.build_request("GET", url, headers=headers), stream=True)

    def _authenticate(self, challenge: str) -> None:
        scheme, params = _parse_challenge(challenge)
        if scheme == "bearer":
            self._authorization = f"Bearer {self._fetch_token(params)}"
        elif scheme == "basic" and self._credentials:
            self._authorization = _basic_authorization(self._credentials)
        else:
            raise self._denied()

    def _fetch_token(self, params: dict[str, str]) -> str:
        """The token flow: the registry names a token server (realm) that vouches for us."""
        realm = params.get("realm")
        if not realm:
            raise ExecutionError(
                f"registry {self.ref.registry} asked for a token without saying where to get one"
            )
        query = {key: params[key] for key in ("service", "scope") if key in params}
        query.setdefault("scope", f"repository:{self.ref.repository}:pull")
        headers = (
            {"Authorization": _basic_authorization(self._credentials)} if self._credentials else {}
        )
        response = self.client.get(realm, params=query, headers=headers)
        if response.status_code in (401, 403):
            raise self._denied()
        if response.is_error:
            raise ExecutionError(
                f"token server {realm} of registry {self.ref.registry} answered HTTP "
                f"{response.status_code} for image {self.name}: {_error_text(response)}"
            )
        try:
            body = response.json()
        except ValueError:
            body = {}
        # Docker's token servers say `token`; OAuth2-style ones say `access_token`.
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ExecutionError(f"token server {realm} returned no token for image {self.name}")
        return token

    def _check(self, response: httpx.Response, path: str) -> None:
        status = response.status_code
        if status in (401, 403):
            raise self._denied()
        if status < 400:
            return
        response.read()
        if status == 404:
            raise NotFoundError(
                f"image {self.name} not found on {self.ref.registry} "
                f"(repository {self.ref.repository}, {path}): {_error_text(response)}"
            )
        raise ExecutionError(
            f"registry {self.ref.registry} answered HTTP {status} for {path} of image "
            f"{self.name}: {_error_text(response)}"
        )

    def _denied(self) -> InvalidError:
        if self._credentials:
            return InvalidError(
                f"registry {self.ref.registry} refused the credentials given for image "
                f"{self.name}: check the username and password, and that the account may pull "
                f"{self.ref.repository}"
            )
        # Docker Hub answers 401 rather than 404 for a repository that does not exist.
        return InvalidError(
            f"registry {self.ref.registry} requires credentials for image {self.name} "
            "(or it does not exist): pass username= and password= to pull it"
        )


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` -> ("bearer", {realm: …, service: …, scope: …})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) or m.group(3) or ""
        for m in _CHALLENGE_PARAM_RE.finditer(rest)
    }
    return scheme.lower(), params


def _basic_authorization(credentials: tuple[str, str]) -> str:
    username, password = credentials
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _error_text(response: httpx.Response) -> str:
    """The registry's own words from its error body ({"errors": [{"code", "message"}]})."""
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors)
    except (ValueError, AttributeError):
        return response.text[:200].strip() or response.reason_phrase


# --- manifests and config ------------------------------------------------------------------------


def _resolve_manifest(registry: _Registry) -> dict[str, Any]:
    """The image manifest for this machine, going through an index if the image has one."""
    media_type, document = _fetch_manifest(registry, registry.ref.version)
    for _ in range(_MAX_INDEX_DEPTH):
        kind = _manifest_kind(media_type, document, registry.name)
        if kind == "manifest":
            return document
        descriptor = _pick_platform(document, registry.name)
        media_type, document = _fetch_manifest(registry, descriptor["digest"])
    raise InvalidError(f"image {registry.name} has indexes nested too deep to resolve")


def _fetch_manifest(registry: _Registry, version: str) -> tuple[str, dict[str, Any]]:
    with registry.get(f"manifests/{version}", accept=_MANIFEST_ACCEPT) as response:
        body = _read_limited(response, _MAX_DOCUMENT_BYTES, registry.name)
        content_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
    if _DIGEST_RE.fullmatch(version):
        # Asked for by digest, the manifest must be exactly that one: this is what pins layers.
        _verify_document(body, version, registry.name)
    document = _load_json(body, f"manifest {version}", registry.name)
    media_type = document.get("mediaType") or content_type
    return media_type, document


def _manifest_kind(media_type: str, document: dict[str, Any], name: str) -> str:
    if media_type in _INDEX_TYPES:
        return "index"
    if media_type in _MANIFEST_TYPES:
        return "manifest"
    if "schemaVersion" in document and document.get("schemaVersion") == 1:
        raise InvalidError(
            f"image {name} uses the Docker schema 1 manifest format, which is not supported; "
            "push it again with a current Docker"
        )
    # `mediaType` is optional in OCI documents and some registries send application/json.
    if isinstance(document.get("manifests"), list):
        return "index"
    if isinstance(document.get("layers"), list):
        return "manifest"
    raise InvalidError(f"image {name} has a manifest of unsupported type {media_type!r}")


def _host_architecture() -> str:
    machine = platform.machine().lower()
    return _ARCHITECTURES.get(machine, machine)


def _pick_platform(index: dict[str, Any], name: str) -> dict[str, Any]:
    """The index entry for linux on this machine's architecture."""
    architecture = _host_architecture()
    entries = [e for e in index.get("manifests") or [] if isinstance(e, dict)]
    matches = [
        e
        for e in entries
        if _platform(e).get("os") == "linux" and _platform(e).get("architecture") == architecture
    ]
    if not matches:
        # Attestations and signatures sit in indexes as unknown/unknown; they are not choices.
        available = sorted(
            {_platform_name(e) for e in entries if _platform(e).get("os") != "unknown"}
        )
        raise InvalidError(
            f"image {name} has no linux/{architecture} variant for this machine "
            f"(it has: {', '.join(available) or 'none'})"
        )
    # Prefer the baseline arm64 variant (v8, or none stated) that every arm64 machine runs.
    matches.sort(key=lambda e: _platform(e).get("variant") not in (None, "", "v8"))
    descriptor = matches[0]
    _descriptor_digest(descriptor, name)
    return descriptor


def _platform(entry: dict[str, Any]) -> dict[str, Any]:
    platform = entry.get("platform")
    return platform if isinstance(platform, dict) else {}


def _platform_name(entry: dict[str, Any]) -> str:
    p = _platform(entry)
    parts = [p.get("os", "?"), p.get("architecture", "?"), p.get("variant")]
    return "/".join(str(part) for part in parts if part)


def _fetch_config(registry: _Registry, manifest: dict[str, Any]) -> RegistryImageConfig:
    descriptor = manifest.get("config")
    if not isinstance(descriptor, dict):
        raise InvalidError(f"image {registry.name} has a manifest without a config")
    media_type = descriptor.get("mediaType")
    if media_type not in _CONFIG_TYPES:
        # Helm charts, signatures and other artifacts use the same manifests with other configs.
        raise InvalidError(
            f"{registry.name} is not a container image (its config has type {media_type!r})"
        )
    digest = _descriptor_digest(descriptor, registry.name)
    with registry.get(f"blobs/{digest}") as response:
        body = _read_limited(response, _MAX_DOCUMENT_BYTES, registry.name)
    _verify_document(body, digest, registry.name)
    return _parse_config(_load_json(body, "config", registry.name))


def _parse_config(document: dict[str, Any]) -> RegistryImageConfig:
    config = document.get("config") or {}
    env = {}
    for item in config.get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    return RegistryImageConfig(
        env=env,
        workdir=config.get("WorkingDir") or "/",
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        user=config.get("User") or "",
    )


def _read_limited(response: httpx.Response, limit: int, name: str) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limit:
            raise InvalidError(f"image {name}: a manifest or config is larger than {limit} bytes")
    return bytes(body)


def _load_json(body: bytes, what: str, name: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise InvalidError(f"image {name} has a {what} that is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidError(f"image {name} has a {what} that is not a JSON object")
    return document


def _descriptor_digest(descriptor: dict[str, Any], name: str) -> str:
    """The descriptor's digest, checked: it goes into URLs and must name content, nothing else."""
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise InvalidError(f"image {name} has a descriptor with a malformed digest {digest!r}")
    return digest


def _verify_document(body: bytes, digest: str, name: str) -> None:
    algorithm, _, expected = digest.partition(":")
    if hashlib.new(algorithm, body).hexdigest() != expected:
        raise ExecutionError(f"image {name}: {digest} arrived with different content; try again")


# --- layers --------------------------------------------------------------------------------------


def _pull_layers(
    registry: _Registry, manifest: dict[str, Any], dest: Path, report: Callable[[str], None]
) -> None:
    layers = [layer for layer in manifest.get("layers") or [] if isinstance(layer, dict)]
    # Check every layer before downloading any, so an unusable image fails in a second, not late.
    compressions = [_layer_compression(layer, registry.name) for layer in layers]
    for layer in layers:
        _descriptor_digest(layer, registry.name)
    # Downloads go beside `dest`, on the disk meant for images, not into a possibly small /tmp.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-download-") as scratch:
        blob = Path(scratch) / "layer"
        for number, (layer, compression) in enumerate(zip(layers, compressions, strict=True), 1):
            report(f"pulling layer {number}/{len(layers)} ({_megabytes(layer.get('size'))})")
            _download_blob(registry, layer, blob)
            _unpack_layer(
                blob, compression, dest, f"layer {layer['digest']} of image {registry.name}"
            )
            blob.unlink()


def _layer_compression(layer: dict[str, Any], name: str) -> str:
    media_type = layer.get("mediaType")
    compression = _LAYER_COMPRESSION.get(str(media_type))
    if compression is None:
        raise InvalidError(f"image {name} has a layer of unsupported type {media_type!r}")
    return compression


def _megabytes(size: object) -> str:
    return f"{size / 1e6:.1f} MB" if isinstance(size, int) else "size unknown"


def _download_blob(registry: _Registry, descriptor: dict[str, Any], path: Path) -> None:
    """Stream the blob to `path`, refusing it unless its digest and size are the manifest's."""
    digest = descriptor["digest"]
    size = descriptor.get("size")
    algorithm, _, expected = digest.partition(":")
    hasher = hashlib.new(algorithm)
    received = 0
    with registry.get(f"blobs/{digest}") as response, path.open("wb") as out:
        for chunk in response.iter_bytes(_CHUNK):
            received += len(chunk)
            if isinstance(size, int) and received > size:
                raise ExecutionError(
                    f"layer {digest} of image {registry.name} is larger than its manifest says "
                    f"({size} bytes); nothing was unpacked from it"
                )
            hasher.update(chunk)
            out.write(chunk)
    if hasher.hexdigest() != expected:
        raise ExecutionError(
            f"layer {digest} of image {registry.name} arrived corrupted (its digest is "
            f"{algorithm}:{hasher.hexdigest()}); nothing was unpacked from it, try the pull again"
        )


class _UnsafeEntry(Exception):
    """A layer entry that would write outside the image, or that cannot be applied."""


@dataclass
class _LayerState:
    """What one layer has done so far; whiteouts only ever hide what lower layers made."""

    kept: set[str] = field(default_factory=set)  # paths this layer wrote, and their parents
    directories: list[tuple[Path, tarfile.TarInfo]] = field(default_factory=list)

    def record(self, relative: str) -> None:
        parts = relative.split("/")
        for end in range(1, len(parts) + 1):
            self.kept.add("/".join(parts[:end]))


def _unpack_layer(blob: Path, compression: str, dest: Path, what: str) -> None:
    state = _LayerState()
    try:
        with (
            _open_decompressed(blob, compression) as stream,
            tarfile.open(fileobj=stream, mode="r|") as archive,
        ):
            for member in archive:
                _apply_member(archive, member, dest, state)
    except _UnsafeEntry as exc:
        raise InvalidError(f"refusing to unpack {what}: {exc}") from exc
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zstandard.ZstdError) as exc:
        raise InvalidError(f"{what} is not a valid {compression} tar archive: {exc}") from exc
    # Directory times last: creating entries in a directory moves its modification time.
    for path, member in reversed(state.directories):
        if path.is_dir() and not path.is_symlink():
            _set_attributes(path, member)


@contextlib.contextmanager
def _open_decompressed(blob: Path, compression: str) -> Iterator[IO[bytes]]:
    with blob.open("rb") as raw:
        if compression == "gzip":
            with gzip.GzipFile(fileobj=raw) as stream:
                yield stream
        elif compression == "zstd":
            # Layers may hold several zstd frames (zstd:chunked); without this, reads stop short
            # at each frame's end.
            with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as reader:
                yield cast(IO[bytes], reader)
        else:
            yield raw


def _apply_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, state: _LayerState
) -> None:
    relative = _member_path(member.name)
    if not relative:
        return  # the layer's root entry: `dest` keeps the attributes its owner gave it
    parent, _, base = relative.rpartition("/")
    if _is_aufs_metadata(relative):
        return
    if base.startswith(_WHITEOUT_PREFIX):
        _apply_whiteout(dest, parent, base, state)
        return
    if member.ischr() or member.isblk() or member.isfifo():
        return  # device nodes and fifos: the runtime provides /dev
    if not (member.isdir() or member.isreg() or member.issym() or member.islnk()):
        return
    _walk_parents(dest, parent, create=True)
    target = dest / relative
    if member.isdir():
        _make_directory(target)
        state.directories.append((target, member))
    elif member.islnk():
        _make_hardlink(dest, member.linkname, target)
    else:
        _remove_existing(target)  # replace what is there; never write through a link
        if member.isreg():
            _write_file(archive, member, target)
        else:
            os.symlink(member.linkname, target)  # any target, absolute ones too: nothing follows it
        _set_attributes(target, member)
    state.record(relative)


def _is_aufs_metadata(relative: str) -> bool:
    return any(
        part.startswith(_AUFS_META_PREFIX) and part != _OPAQUE_WHITEOUT
        for part in relative.split("/")
    )


def _member_path(name: str) -> str:
    """The entry's path relative to the image root; names that could leave it are refused."""
    if name.startswith("/"):
        raise _UnsafeEntry(f"entry {name!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _UnsafeEntry(f"entry {name!r} has a '..' in its path")
    return "/".join(parts)


def _walk_parents(dest: Path, parent: str, *, create: bool) -> bool:
    """Whether the directories of `parent` exist, all real directories (a symlink is refused).

    Layers are diffs of file systems, so their paths never lead through symlinks; one that does
    could, with an absolute link target, write into the host's own directories.
    """
    current = dest
    for part in parent.split("/") if parent else []:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            if not create:
                return False
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(mode):
            raise _UnsafeEntry(f"path {parent!r} leads through the symlink {part!r}")
        if not stat.S_ISDIR(mode):
            raise _UnsafeEntry(f"path {parent!r} leads through {part!r}, which is not a directory")
    return True


def _remove_existing(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _make_directory(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        os.mkdir(path, 0o755)
        return
    if not stat.S_ISDIR(mode):
        os.unlink(path)  # a symlink or file gives way to the directory; its contents never follow
        os.mkdir(path, 0o755)


def _write_file(archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
    # O_EXCL|O_NOFOLLOW: the path was just cleared, so anything there now is not ours to follow.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    source = archive.extractfile(member)
    assert source is not None  # a regular file always has contents, empty or not
    with source, os.fdopen(os.open(path, flags, 0o600), "wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)


def _make_hardlink(dest: Path, linkname: str, target: Path) -> None:
    source_relative = _member_path(linkname)
    source_parent = source_relative.rpartition("/")[0]
    source = dest / source_relative
    if not source_relative or not _walk_parents(dest, source_parent, create=False):
        raise _UnsafeEntry(
            f"hard link {target.name!r} points to {linkname!r}, which does not exist"
        )
    try:
        source_mode = os.lstat(source).st_mode
    except FileNotFoundError:
        raise _UnsafeEntry(f"hard link points to {linkname!r}, which does not exist") from None
    if stat.S_ISDIR(source_mode):
        raise _UnsafeEntry(f"hard link points to the directory {linkname!r}")
    if source == target:
        return
    _remove_existing(target)
    # follow_symlinks=False: a link to a symlink links the symlink itself, never what it names.
    # The new name shares the inode, so the attributes set on the source already apply.
    os.link(source, target, follow_symlinks=False)


def _set_attributes(path: Path, member: tarfile.TarInfo) -> None:
    if os.geteuid() == 0:
        # Numeric ids: names would be looked up in the host's /etc/passwd, not the image's.
        os.lchown(path, member.uid, member.gid)
    if not member.issym():
        os.chmod(path, member.mode & 0o7777)  # after chown, which clears set-user-id bits
    _set_xattrs(path, member)  # after chown too, which clears file capabilities
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _set_xattrs(path: Path, member: tarfile.TarInfo) -> None:
    """Extended attributes, chiefly file capabilities (`ping` needs cap_net_raw)."""
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            # Best effort, like Docker: some file systems or attribute namespaces refuse them.
            with contextlib.suppress(OSError):
                os.setxattr(
                    path,
                    key.removeprefix("SCHILY.xattr."),
                    value.encode("utf-8", "surrogateescape"),
                    follow_symlinks=False,
                )


def _apply_whiteout(dest: Path, parent: str, base: str, state: _LayerState) -> None:
    if not _walk_parents(dest, parent, create=False):
        return  # nothing below a directory that does not exist to hide
    if base == _OPAQUE_WHITEOUT:
        _clear_lower_entries(dest, parent, state.kept)
        return
    hidden = base.removeprefix(_WHITEOUT_PREFIX)
    if hidden in ("", ".", ".."):
        # `.wh...` would name the directory above, which for the root is outside the image.
        raise _UnsafeEntry(f"whiteout {base!r} in {parent or '/'!r} names no entry of its own")
    relative = f"{parent}/{hidden}" if parent else hidden
    if relative not in state.kept:
        _remove_existing(dest / relative)


def _clear_lower_entries(dest: Path, relative_dir: str, kept: set[str]) -> None:
    """Empty a directory of what lower layers put there, keeping what this layer wrote."""
    directory = dest / relative_dir if relative_dir else dest
    with os.scandir(directory) as entries:
        children = list(entries)
    for entry in children:
        relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
        if relative not in kept:
            _remove_existing(Path(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            _clear_lower_entries(dest, relative, kept)
