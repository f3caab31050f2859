"""The contract every chunk store backend keeps; `store` (conftest.py) runs each test on each."""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from ember.errors import ExecutionError, InvalidError, NotFoundError
from ember.imagefs.s3_store import S3ChunkStore
from ember.imagefs.store import ChunkStore, open_store

DIGEST = "ab" * 32


@pytest.mark.parametrize(
    "data", [b"", b"hello", os.urandom(5 * 1024 * 1024)], ids=["empty", "small", "5MiB"]
)
def test_put_then_get_returns_the_same_bytes(store: ChunkStore, data: bytes) -> None:
    store.put(f"chunks/{DIGEST}", data)
    assert store.get(f"chunks/{DIGEST}") == data


def test_get_of_a_range_returns_those_bytes(store: ChunkStore) -> None:
    data = os.urandom(100_000)
    store.put("images/i1/prefetch", data)
    assert store.get("images/i1/prefetch", 10, 20) == data[10:30]
    assert store.get("images/i1/prefetch", 99_990, 20) == data[99_990:]  # fewer where it ends
    assert store.get("images/i1/prefetch", 50_000) == data[50_000:]
    assert store.get("images/i1/prefetch", 0, 100_000) == data


def test_get_of_a_missing_key_names_key_and_store(store: ChunkStore) -> None:
    with pytest.raises(NotFoundError) as info:
        store.get(f"chunks/{DIGEST}")
    with pytest.raises(NotFoundError):
        store.get(f"chunks/{DIGEST}", 10, 20)
    assert f"chunks/{DIGEST}" in str(info.value)
    assert store.url in str(info.value)


def test_exists(store: ChunkStore) -> None:
    assert not store.exists("images/i1/manifest")
    store.put("images/i1/manifest", b"m")
    assert store.exists("images/i1/manifest")
    assert not store.exists("images/i1")  # a key's parent is not a key
    assert not store.exists("images/i1/manifes")


def test_delete_removes_the_key_and_is_idempotent(store: ChunkStore) -> None:
    store.put("chunks/a", b"1")
    store.put("chunks/b", b"2")
    store.delete("chunks/a")
    assert not store.exists("chunks/a")
    with pytest.raises(NotFoundError):
        store.get("chunks/a")
    store.delete("chunks/a")
    store.delete("chunks/never-there")
    assert store.get("chunks/b") == b"2"


def test_list_matches_by_prefix(store: ChunkStore) -> None:
    keys = [
        "chunks/ab01",
        "chunks/ab02",
        "chunks/cd03",
        "chunksx/ab04",
        "images/i1/manifest",
        "images/i1/layers/0",
        "images/i12/manifest",
    ]
    for key in keys:
        store.put(key, key.encode())
    assert set(store.list("chunks/ab")) == {"chunks/ab01", "chunks/ab02"}
    assert set(store.list("chunks/")) == {"chunks/ab01", "chunks/ab02", "chunks/cd03"}
    assert set(store.list("chunks")) == {
        "chunks/ab01",
        "chunks/ab02",
        "chunks/cd03",
        "chunksx/ab04",
    }
    assert set(store.list("images/i1/")) == {"images/i1/manifest", "images/i1/layers/0"}
    assert set(store.list("images/i1")) == {
        "images/i1/manifest",
        "images/i1/layers/0",
        "images/i12/manifest",
    }
    assert set(store.list("")) == set(keys)
    assert list(store.list("nothing/")) == []
    assert list(store.list("chunks/ef")) == []


def test_put_of_an_existing_key_is_fine(store: ChunkStore) -> None:
    store.put(f"chunks/{DIGEST}", b"value")
    store.put(f"chunks/{DIGEST}", b"value")
    assert store.get(f"chunks/{DIGEST}") == b"value"
    assert list(store.list("chunks/")) == [f"chunks/{DIGEST}"]


@pytest.mark.parametrize("key", ["", "/chunks/a", "chunks//a", "chunks/a/", "./a", "a/../b", ".."])
def test_invalid_keys_are_rejected(store: ChunkStore, key: str) -> None:
    with pytest.raises(InvalidError):
        store.put(key, b"x")
    with pytest.raises(InvalidError):
        store.get(key)
    with pytest.raises(InvalidError):
        store.exists(key)
    with pytest.raises(InvalidError):
        store.delete(key)
    assert list(store.list("")) == []


def test_concurrent_puts_and_gets_from_32_threads(
    store: ChunkStore, caplog: pytest.LogCaptureFixture
) -> None:
    values = {f"chunks/{i:064x}": os.urandom(1000 + i) for i in range(64)}
    start = threading.Barrier(32, timeout=30)  # all 32 threads in flight together

    def put_then_get(keys: list[str]) -> list[bytes]:
        start.wait()
        for key in keys:
            store.put(key, values[key])
        assert all(store.exists(key) for key in keys)
        return [store.get(key) for key in keys]

    groups = [list(values)[i::32] for i in range(32)]
    with caplog.at_level(logging.WARNING), ThreadPoolExecutor(32) as pool:
        results = list(pool.map(put_then_get, groups))
    assert results == [[values[k] for k in group] for group in groups]
    assert set(store.list("chunks/")) == set(values)
    # Too small a connection pool makes urllib3 drop and reopen connections, and say so.
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


def test_open_store_of_url_reaches_the_same_data(store: ChunkStore) -> None:
    store.put("images/i1/manifest", b"from the first")
    other = open_store(store.url)
    try:
        assert type(other) is type(store)
        assert other.url == store.url
        assert other.get("images/i1/manifest") == b"from the first"
        other.put("images/i2/manifest", b"from the second")
        assert store.get("images/i2/manifest") == b"from the second"
    finally:
        other.close()


def test_a_missing_bucket_is_reported_not_created(s3_endpoint: str) -> None:
    url = f"s3://no-such-bucket-here?endpoint_url={s3_endpoint}&region=us-east-1"
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
        open_store(url)
    with pytest.raises(NotFoundError, match="does not exist"):
        open_store(url)  # and the first attempt did not create it


def test_a_bucket_deleted_after_open_is_reported(s3_bucket: str, s3_endpoint: str) -> None:
    store = S3ChunkStore(s3_bucket, endpoint_url=s3_endpoint, region="us-east-1")
    store._client.delete_bucket(Bucket=s3_bucket)
    with pytest.raises(NotFoundError, match=f"bucket '{s3_bucket}' does not exist"):
        store.get("chunks/a")
    with pytest.raises(NotFoundError, match="does not exist"):
        store.put("chunks/a", b"x")
    store.close()


def test_s3_list_follows_every_page(s3_bucket: str, s3_endpoint: str) -> None:
    store = S3ChunkStore(s3_bucket, "p", endpoint_url=s3_endpoint, region="us-east-1")
    store._page_size = 2
    requests: list[object] = []
    store._client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda **_: requests.append(None)
    )
    keys = {f"chunks/{i:064x}" for i in range(7)}
    for key in keys:
        store.put(key, b"x")
    listed = list(store.list("chunks/"))
    assert sorted(listed) == sorted(keys)
    assert len(requests) == 4
    store.close()


def test_s3_prefixes_keep_stores_apart(s3_bucket: str, s3_endpoint: str) -> None:
    one = open_store(f"s3://{s3_bucket}/one?endpoint_url={s3_endpoint}")
    two = open_store(f"s3://{s3_bucket}/two/?endpoint_url={s3_endpoint}")
    whole = open_store(f"s3://{s3_bucket}?endpoint_url={s3_endpoint}")
    one.put("chunks/a", b"1")
    two.put("chunks/a", b"2")
    assert (one.get("chunks/a"), two.get("chunks/a")) == (b"1", b"2")
    assert list(two.list("")) == ["chunks/a"]
    assert set(whole.list("")) == {"one/chunks/a", "two/chunks/a"}
    assert two.url == f"s3://{s3_bucket}/two?{urlencode({'endpoint_url': s3_endpoint})}"
    for store in (one, two, whole):
        store.close()


@pytest.mark.parametrize(
    "url", ["s3://", "s3:///prefix", "s3://bucket?endpoint=http://x", "s3://bucket?regoin=x"]
)
def test_bad_s3_urls_are_rejected(url: str) -> None:
    with pytest.raises(InvalidError):
        S3ChunkStore.from_url(url)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def reply(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[QuietHandler]) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 for the block, on the port yielded."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


class FailingS3(QuietHandler):
    """An S3 endpoint that answers every request with `status` and an S3 error document."""

    status = 403

    def answer(self) -> None:
        self.reply(self.status, b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>")

    do_GET = do_HEAD = answer


@pytest.mark.parametrize("status, shown", [(403, "HTTP 403 AccessDenied"), (503, "HTTP 503")])
def test_s3_errors_name_the_key_the_store_and_the_answer(
    status: int, shown: str, s3_endpoint: str
) -> None:
    # (s3_endpoint: for the dummy credentials it sets; the requests go to a server of our own.)
    with serving(FailingS3) as port:
        # Opening carries on past a 403 from the bucket: a key may allow objects, not the bucket.
        FailingS3.status = 403
        store = S3ChunkStore("b", endpoint_url=f"http://127.0.0.1:{port}")
        FailingS3.status = status
        with pytest.raises(ExecutionError) as info:
            store.get(f"chunks/{DIGEST}", 0, 10)
    assert f"chunks/{DIGEST}" in str(info.value) and store.url in str(info.value)
    assert shown in str(info.value)
    with pytest.raises(ExecutionError) as info:  # and once the server is gone
        store.get(f"chunks/{DIGEST}")
    assert f"chunks/{DIGEST}" in str(info.value) and "refused" in str(info.value)


class ForwardingProxy(QuietHandler):
    """An HTTP proxy that passes each request on and remembers what it was asked for."""

    seen: list[str] = []

    def forward(self) -> None:
        ForwardingProxy.seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        request = urllib.request.Request(
            self.path, data=self.rfile.read(length) or None, method=self.command
        )
        for name, value in self.headers.items():
            if name.lower() not in ("host", "proxy-connection", "connection"):
                request.add_header(name, value)
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            response = direct.open(request)
        except urllib.error.HTTPError as error:
            response = error
        headers = [
            (name, value)
            for name, value in response.headers.items()
            if name.lower() not in ("transfer-encoding", "connection", "content-length")
        ]
        self.reply(response.status, response.read(), headers)

    do_GET = do_HEAD = forward


def test_s3_gets_go_through_the_proxy_the_environment_names(
    s3_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    S3ChunkStore(s3_bucket, endpoint_url=s3_endpoint).put("images/i1/prefetch", b"0123456789")
    ForwardingProxy.seen = []
    with serving(ForwardingProxy) as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY")
        store = S3ChunkStore(s3_bucket, endpoint_url=s3_endpoint)
        assert store.get("images/i1/prefetch", 2, 3) == b"234"
    assert f"GET {s3_endpoint}/{s3_bucket}/images/i1/prefetch" in ForwardingProxy.seen


class RangesWith200(QuietHandler):
    """An S3 endpoint holding one value that answers a range with 200 and a Content-Range (as
    `rclone serve s3` does), or ignores ranges altogether."""

    value = bytes(range(256)) * 4
    ignore_ranges = False

    def answer(self) -> None:
        wanted = self.headers.get("Range")
        if self.command == "HEAD" or wanted is None or self.ignore_ranges:
            self.reply(200, self.value)
            return
        first, last = (int(bound) for bound in wanted.removeprefix("bytes=").split("-"))
        total = len(self.value)
        self.reply(
            200, self.value[first : last + 1], [("Content-Range", f"bytes {first}-{last}/{total}")]
        )

    do_GET = do_HEAD = answer


@pytest.mark.parametrize("ignore_ranges", [False, True])
def test_s3_ranges_answered_with_200_are_read_right(ignore_ranges: bool, s3_endpoint: str) -> None:
    # (s3_endpoint: for the dummy credentials it sets; the requests go to a server of our own.)
    RangesWith200.ignore_ranges = ignore_ranges
    with serving(RangesWith200) as port:
        store = S3ChunkStore("b", endpoint_url=f"http://127.0.0.1:{port}")
        assert store.get("images/i1/prefetch", 300, 5) == RangesWith200.value[300:305]
        assert store.get("images/i1/prefetch", 0, 3) == RangesWith200.value[:3]
