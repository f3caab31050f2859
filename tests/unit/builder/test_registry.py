"""Pulling images from a real registry: Debian's `docker-registry`, started on a free port.

Images are built in Python (tar layers, config, manifests; tests/registry_support.py) and pushed
over the registry's HTTP API, so every byte of what is pulled is known. A small in-process proxy
plays a registry with token authentication, which `docker-registry` cannot do without a signing
setup.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import zstandard

from ember.builder import registry
from ember.builder.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageReference,
    parse_reference,
    platforms,
    pull_image,
    registry_url,
)
from ember.errors import ExecutionError, InvalidError, NotFoundError
from tests.registry_support import (
    DOCKER_LAYER,
    MTIME,
    OCI_CONFIG,
    PASSWORD,
    USER,
    Entry,
    Registry,
    config_blob,
    descriptor,
    digest_of,
    directory,
    file,
    free_port,
    gzip_layer,
    hardlink,
    skip_without_registry,
    start_registry,
    symlink,
    tar_bytes,
    write_htpasswd,
)


def basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


class TokenRegistry:
    """A registry with token auth in front of `upstream`, as Docker Hub and GHCR have.

    /v2/ requests need `Authorization: Bearer <TOKEN>`; without it they get the challenge naming
    /token, which hands out the token (for `credentials` only, when set). Blob requests are
    redirected to /storage/, the way registries send them to object storage.
    """

    TOKEN = "tok-123"

    def __init__(
        self, upstream: Registry, credentials: tuple[str, str] | None, *, scope: bool = True
    ) -> None:
        self.upstream = upstream
        self.scope = scope  # whether the challenge names the scope or leaves it to the client
        self.credentials = credentials
        self.token_requests: list[dict[str, str]] = []
        self.storage_hits = 0
        self.http = httpx.Client(base_url=f"http://{upstream.host}", timeout=10)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                authorization = self.headers.get("Authorization", "")
                if url.path == "/token":
                    query = {key: values[0] for key, values in parse_qs(url.query).items()}
                    proxy.token_requests.append({**query, "authorization": authorization})
                    if proxy.credentials and authorization != basic(proxy.credentials):
                        self.reply(401, b'{"details": "bad credentials"}')
                    else:
                        self.reply(200, json.dumps({"access_token": proxy.TOKEN}).encode())
                elif url.path.startswith("/storage/"):
                    proxy.storage_hits += 1
                    self.forward(self.path.removeprefix("/storage"))
                elif authorization != f"Bearer {proxy.TOKEN}":
                    repository = url.path.removeprefix("/v2/").rsplit("/", 2)[0]
                    challenge = f'Bearer realm="http://{proxy.host}/token",service="ember-test"'
                    if proxy.scope:
                        challenge += f',scope="repository:{repository}:pull"'
                    self.reply(401, b"{}", {"WWW-Authenticate": challenge})
                elif "/blobs/" in url.path:
                    self.reply(307, b"", {"Location": f"/storage{self.path}"})
                else:
                    self.forward(self.path)

            def forward(self, path: str) -> None:
                upstream = proxy.http.get(
                    path,
                    headers={"Accept": self.headers.get("Accept", "*/*")},
                )
                self.reply(
                    upstream.status_code,
                    upstream.content,
                    {"Content-Type": upstream.headers.get("Content-Type", "")},
                )

            def reply(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def __enter__(self) -> TokenRegistry:
        # A short poll interval: shutdown() waits for it.
        serve = self.server.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    skip_without_registry()
    with start_registry(tmp_path_factory.mktemp("registry") / "plain") as started:
        yield started


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    skip_without_registry()
    root = tmp_path_factory.mktemp("registry")
    with start_registry(root / "private", write_htpasswd(root / "htpasswd")) as started:
        yield started


# --- the image most tests pull -------------------------------------------------------------------

BASE_LAYER = [
    directory("etc"),
    file("etc/hostname", b"one\n"),
    file("etc/old.conf", b"removed by the next layer"),
    directory("usr"),
    directory("usr/bin"),
    file("usr/bin/python3.11", b"#!/bin/sh\n", mode=0o755, uid=1000, gid=1001),
    symlink("usr/bin/python3", "/usr/bin/python3.11"),
    hardlink("usr/bin/python", "usr/bin/python3.11"),
    file("usr/bin/ping", b"ping", mode=0o4755, pax={"SCHILY.xattr.user.ember": "cap"}),
    directory("opt"),
    directory("opt/data"),
    file("opt/data/a.txt", b"a"),
    directory("opt/data/sub"),
    file("opt/data/sub/b.txt", b"b"),
    directory("tmp", mode=0o1777),
    Entry("dev/null", tarfile.CHRTYPE),
    Entry("run/initctl", tarfile.FIFOTYPE),
]
TOP_LAYER = [
    file("etc/.wh.old.conf"),
    directory("opt/data"),
    # Before the opaque marker and in the same layer: the marker hides lower layers only.
    file("opt/data/new.txt", b"new"),
    file("opt/data/.wh..wh..opq"),
    file(".wh..wh.plnk/12.34", b"aufs bookkeeping"),
    file("etc/hostname", b"two\n"),
    directory("app"),
]
CONFIG = config_blob(
    Env=["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8", "EMPTY="],
    WorkingDir="/app",
    Entrypoint=["/usr/bin/python3"],
    Cmd=["-c", "print(1)"],
    User="1000:1001",
)
EXPECTED_CONFIG = registry.RegistryImageConfig(
    env={"PATH": "/usr/local/bin:/usr/bin", "LANG": "C.UTF-8", "EMPTY": ""},
    workdir="/app",
    entrypoint=["/usr/bin/python3"],
    cmd=["-c", "print(1)"],
    user="1000:1001",
)


def push_app(target: Registry, repository: str = "team/app", tag: str = "v1") -> None:
    target.push_image(repository, tag, [gzip_layer(BASE_LAYER), gzip_layer(TOP_LAYER)], CONFIG)


def supports_user_xattrs(directory: Path) -> bool:
    probe = directory / "xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


# --- references ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        (
            "python:3.11-slim",
            ImageReference("registry-1.docker.io", "library/python", "3.11-slim", None),
        ),
        ("ubuntu", ImageReference("registry-1.docker.io", "library/ubuntu", "latest", None)),
        ("docker.io/org/img", ImageReference("registry-1.docker.io", "org/img", "latest", None)),
        ("ghcr.io/org/img:tag", ImageReference("ghcr.io", "org/img", "tag", None)),
        ("localhost:5000/team/app", ImageReference("localhost:5000", "team/app", "latest", None)),
        ("localhost/app:1", ImageReference("localhost", "app", "1", None)),
        ("[::1]:5000/a/b:c", ImageReference("[::1]:5000", "a/b", "c", None)),
        (
            "name@sha256:" + "a" * 64,
            ImageReference("registry-1.docker.io", "library/name", None, "sha256:" + "a" * 64),
        ),
        (
            "r.io:443/a:t@sha256:" + "b" * 64,
            ImageReference("r.io:443", "a", "t", "sha256:" + "b" * 64),
        ),
    ],
)
def test_references_parse_like_docker(reference: str, expected: ImageReference) -> None:
    parsed = parse_reference(reference)
    assert parsed == expected
    assert parsed.version == (expected.digest or expected.tag)


@pytest.mark.parametrize("reference", ["Python:3", "a::b", "a@sha256:123", "ghcr.io/", "a:b c", ""])
def test_malformed_references_are_refused(reference: str) -> None:
    with pytest.raises(InvalidError):
        parse_reference(reference)


@pytest.mark.parametrize(
    ("host", "insecure", "url"),
    [
        ("localhost:5000", False, "http://localhost:5000"),
        ("127.0.0.1:5000", False, "http://127.0.0.1:5000"),
        ("[::1]:5000", False, "http://[::1]:5000"),
        ("ghcr.io", False, "https://ghcr.io"),
        ("registry.lan:5000", False, "https://registry.lan:5000"),
        ("registry.lan:5000", True, "http://registry.lan:5000"),
    ],
)
def test_only_local_or_insecure_registries_use_plain_http(
    host: str, insecure: bool, url: str
) -> None:
    assert registry_url(host, insecure=insecure) == url


# --- pulling -------------------------------------------------------------------------------------


def test_layers_apply_in_order_with_whiteouts_links_and_attributes(
    plain: Registry, tmp_path: Path
) -> None:
    push_app(plain)
    messages: list[str] = []
    config = pull_image(f"{plain.host}/team/app:v1", tmp_path / "root", progress=messages.append)
    root = tmp_path / "root"

    assert config == EXPECTED_CONFIG
    assert [m.split(" (")[0] for m in messages] == ["pulling layer 1/2", "pulling layer 2/2"]
    assert messages[0].endswith(" MB)")
    assert (root / "etc/hostname").read_bytes() == b"two\n"
    assert not (root / "etc/old.conf").exists()
    assert sorted(os.listdir(root / "opt/data")) == ["new.txt"]
    assert os.readlink(root / "usr/bin/python3") == "/usr/bin/python3.11"
    assert os.stat(root / "usr/bin/python").st_ino == os.stat(root / "usr/bin/python3.11").st_ino
    binary = os.lstat(root / "usr/bin/python3.11")
    assert binary.st_mode & 0o7777 == 0o755
    assert binary.st_mtime == MTIME
    assert os.lstat(root / "usr/bin/python3").st_mtime == MTIME
    assert os.lstat(root / "usr/bin/ping").st_mode & 0o7777 == 0o4755
    assert os.lstat(root / "tmp").st_mode & 0o7777 == 0o1777
    assert os.lstat(root / "tmp").st_mtime == MTIME
    # Set after their entries were written, which moves a directory's time.
    assert os.lstat(root / "usr/bin").st_mtime == MTIME
    assert os.lstat(root / "opt/data").st_mtime == MTIME
    if os.geteuid() == 0:
        assert (binary.st_uid, binary.st_gid) == (1000, 1001)
    if supports_user_xattrs(tmp_path):
        assert os.getxattr(root / "usr/bin/ping", "user.ember") == b"cap"
    assert not (root / "dev").exists()
    assert not (root / "run").exists()
    names = [name for _, dirs, files in os.walk(root) for name in dirs + files]
    assert not [name for name in names if name.startswith(".wh.")]
    assert not [p for p in tmp_path.iterdir() if p.name != "root"], "download scratch left behind"


def test_oci_manifest_by_digest_with_zstd_and_plain_layers(plain: Registry, tmp_path: Path) -> None:
    zstd_tar = tar_bytes([file("a.txt", b"zstd")])
    compressor = zstandard.ZstdCompressor()
    # Two frames, as chunked zstd layers have: all of them must be read.
    zstd_layer = compressor.compress(zstd_tar[:512]) + compressor.compress(zstd_tar[512:])
    plain_layer = tar_bytes([file("b.txt", b"plain"), symlink("c", "a.txt")])
    for blob in (zstd_layer, plain_layer, CONFIG_MINIMAL):
        plain.push_blob("oci/app", blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, CONFIG_MINIMAL),
        "layers": [
            descriptor("application/vnd.oci.image.layer.v1.tar+zstd", zstd_layer),
            descriptor("application/vnd.oci.image.layer.v1.tar", plain_layer),
        ],
    }
    digest = plain.push_manifest("oci/app", "v1", manifest)

    config = pull_image(f"{plain.host}/oci/app@{digest}", tmp_path / "root")

    assert (tmp_path / "root/a.txt").read_bytes() == b"zstd"
    assert (tmp_path / "root/c").read_bytes() == b"zstd"
    assert (tmp_path / "root/b.txt").read_bytes() == b"plain"
    assert config == registry.RegistryImageConfig(
        env={}, workdir="/", entrypoint=[], cmd=["sh"], user=""
    )


CONFIG_MINIMAL = config_blob(Cmd=["sh"])


@pytest.mark.parametrize(
    ("index_type", "manifest_type", "machine", "expected"),
    [
        (OCI_INDEX, OCI_MANIFEST, "x86_64", "amd64"),
        (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST, "aarch64", "arm64"),
    ],
)
def test_an_index_resolves_to_this_machines_architecture(
    plain: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    index_type: str,
    manifest_type: str,
    machine: str,
    expected: str,
) -> None:
    repository = f"multi/{expected}"
    entries = []
    for arch, variant in [("arm", "v7"), ("amd64", None), ("arm64", "v8")]:
        layer = gzip_layer([file("arch.txt", arch.encode())])
        pushed = plain.push_image(
            repository,
            f"only-{arch}",
            [layer],
            config_blob(arch),
            media_type=manifest_type,
            layer_type=DOCKER_LAYER
            if manifest_type == DOCKER_MANIFEST
            else "application/vnd.oci.image.layer.v1.tar+gzip",
        )
        platform = {"os": "linux", "architecture": arch} | ({"variant": variant} if variant else {})
        entries.append({**pushed, "platform": platform})
    plain.push_manifest(
        repository, "latest", {"schemaVersion": 2, "mediaType": index_type, "manifests": entries}
    )
    monkeypatch.setattr(platforms.platform, "machine", lambda: machine)

    pull_image(f"{plain.host}/{repository}", tmp_path / "root")

    assert (tmp_path / "root/arch.txt").read_text() == expected


def test_an_index_without_this_architecture_says_what_it_has(
    plain: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pushed = plain.push_image(
        "multi/other", "s390x", [gzip_layer([file("x")])], config_blob("s390x")
    )
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{**pushed, "platform": {"os": "linux", "architecture": "s390x"}}],
    }
    plain.push_manifest("multi/other", "latest", index)
    monkeypatch.setattr(platforms.platform, "machine", lambda: "x86_64")

    with pytest.raises(InvalidError, match=r"no linux/amd64 variant.*linux/s390x"):
        pull_image(f"{plain.host}/multi/other", tmp_path / "root")


@pytest.mark.parametrize("path", ["team/app:no-such-tag", "no/such-repo:v1"])
def test_a_missing_tag_or_repository_is_not_found(
    plain: Registry, tmp_path: Path, path: str
) -> None:
    push_app(plain)
    reference = f"{plain.host}/{path}"
    with pytest.raises(NotFoundError, match=reference):
        pull_image(reference, tmp_path / "root")


def test_basic_auth_needs_the_right_credentials(private: Registry, tmp_path: Path) -> None:
    push_app(private, "secret/app")
    reference = f"{private.host}/secret/app:v1"

    with pytest.raises(
        InvalidError, match=rf"requires credentials for image {reference}.*username="
    ):
        pull_image(reference, tmp_path / "anonymous")
    with pytest.raises(InvalidError, match="refused the credentials"):
        pull_image(reference, tmp_path / "wrong", username=USER, password="wrong")
    config = pull_image(reference, tmp_path / "root", username=USER, password=PASSWORD)

    assert config == EXPECTED_CONFIG
    assert (tmp_path / "root/etc/hostname").read_bytes() == b"two\n"


@pytest.mark.parametrize("scope_in_challenge", [True, False])
def test_token_auth_fetches_a_scoped_token_and_follows_blob_redirects(
    plain: Registry, tmp_path: Path, scope_in_challenge: bool
) -> None:
    push_app(plain, "private/app")
    with TokenRegistry(plain, (USER, PASSWORD), scope=scope_in_challenge) as proxy:
        reference = f"{proxy.host}/private/app:v1"
        with pytest.raises(InvalidError, match=rf"requires credentials for image {reference}"):
            pull_image(reference, tmp_path / "anonymous")

        config = pull_image(reference, tmp_path / "root", username=USER, password=PASSWORD)

    assert config == EXPECTED_CONFIG
    assert (tmp_path / "root/usr/bin/python3.11").read_bytes() == b"#!/bin/sh\n"
    last = proxy.token_requests[-1]
    assert last["service"] == "ember-test"
    assert last["scope"] == "repository:private/app:pull"
    assert last["authorization"] == basic((USER, PASSWORD))
    assert len(proxy.token_requests) == 2, "one token for the whole pull, none per request"
    assert proxy.storage_hits == 3  # config and both layers, each through the redirect


def test_a_corrupted_layer_is_refused_before_unpacking(plain: Registry, tmp_path: Path) -> None:
    layer = gzip_layer([file("corrupt-me.txt", b"x" * 100)])
    plain.push_image("broken/app", "v1", [layer], CONFIG)
    data = (
        plain.storage
        / "docker/registry/v2/blobs/sha256"
        / digest_of(layer)[7:9]
        / digest_of(layer)[7:]
        / "data"
    )
    damaged = bytearray(data.read_bytes())
    damaged[-10] ^= 0xFF  # same size, different bytes
    data.write_bytes(bytes(damaged))

    with pytest.raises(ExecutionError, match="arrived corrupted"):
        pull_image(f"{plain.host}/broken/app:v1", tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []


ESCAPES: dict[str, Callable[[Path], list[Entry]]] = {
    "absolute path": lambda outside: [file("/abs-evil", b"x")],
    "dot-dot": lambda outside: [file("../evil", b"x")],
    "nested dot-dot": lambda outside: [directory("a"), file("a/../../evil", b"x")],
    "write through absolute symlink": lambda outside: [
        symlink("link", str(outside)),
        file("link/evil", b"x"),
    ],
    "write through relative symlink": lambda outside: [
        # Relative to the image root `tmp_path/root`: a broken check writes only into tmp_path.
        symlink("up", "../outside"),
        file("up/evil", b"x"),
    ],
    "directory through symlink": lambda outside: [
        symlink("link", str(outside)),
        directory("link/evil"),
    ],
    "hardlink through symlink": lambda outside: [
        symlink("link", str(outside)),
        hardlink("stolen", "link/secret"),
    ],
    "hardlink with dot-dot": lambda outside: [hardlink("stolen", "../outside/secret")],
    "whiteout through symlink": lambda outside: [
        symlink("link", str(outside)),
        file("link/.wh.secret"),
    ],
    # `.wh.` + `..`: hiding the directory above the root would delete tmp_path.
    "whiteout of dot-dot": lambda outside: [file(".wh...")],
    "whiteout of dot-dot below": lambda outside: [directory("a"), file("a/.wh...")],
    "opaque through symlink": lambda outside: [
        symlink("link", str(outside)),
        file("link/.wh..wh..opq"),
    ],
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_entries_escaping_the_root_are_refused(plain: Registry, tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    tag = case.replace(" ", "-")
    plain.push_image("escape/app", tag, [gzip_layer(ESCAPES[case](outside))], CONFIG)

    with pytest.raises(InvalidError, match="refusing to unpack"):
        pull_image(f"{plain.host}/escape/app:{tag}", tmp_path / "root")

    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "host file"
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "root/stolen").exists()


def test_the_destination_must_be_empty(plain: Registry, tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root/existing").touch()
    with pytest.raises(InvalidError, match="not empty"):
        pull_image(f"{plain.host}/team/app:v1", tmp_path / "root")


def test_an_unreachable_registry_is_an_execution_error(tmp_path: Path) -> None:
    reference = f"127.0.0.1:{free_port()}/team/app:v1"  # nothing listens there
    with pytest.raises(ExecutionError, match=f"could not pull image {reference}"):
        pull_image(reference, tmp_path / "root")
