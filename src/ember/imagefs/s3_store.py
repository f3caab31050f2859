"""`S3ChunkStore`: the chunk store on any S3-compatible object storage (AWS S3, MinIO, Ceph...).

Why: builders and workers on different hosts need one shared store, and S3 is what every cluster
can get. What: `s3://bucket[/prefix]?endpoint_url=http://host:port&region=us-east-1` (query
optional), credentials from boto3's usual sources (`AWS_ACCESS_KEY_ID`...). A PUT replaces an
object whole, so readers never see half a value; values are immutable, so `put` just writes again.
One thread-safe client with a pool big enough for the fetcher's threads serves every call. The
bucket must exist (checked at open, never created here). Only this module imports boto3.

GETs, the one request a host makes by the hundred when a container starts, skip boto3's client:
it spends about 2 ms of CPU on each (event hooks, endpoint rules, response parsing). The same
request is signed by botocore's SigV4 signer and sent on a urllib3 pool, for a fraction of that,
through the proxy and with the CA bundle boto3 would use (`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`,
`AWS_CA_BUNDLE`).
"""

from __future__ import annotations

import os
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import boto3
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import ClientError

from ember.errors import ExecutionError, InvalidError, NotFoundError
from ember.imagefs.store import check_key

# One session for all stores: a client from a warm session takes ms, from a new one ~100 ms.
# Sessions are not thread-safe, so clients are made under the lock (clients themselves are).
_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


class S3ChunkStore:
    _page_size = 1000  # keys per LIST request (S3's maximum); tests make it small

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        global _session
        self.bucket, self.prefix = bucket, prefix.strip("/")
        path = f"/{self.prefix}" if self.prefix else ""
        query = urlencode(
            {k: v for k, v in [("endpoint_url", endpoint_url), ("region", region)] if v}
        )
        self.url = f"s3://{bucket}{path}" + (f"?{query}" if query else "")
        config = Config(
            max_pool_connections=64,  # the fetcher runs ~32 threads: none should wait for a socket
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            # Checksum trailers on every request trip up many S3-compatible servers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Path style (`host/bucket/key`): what MinIO and friends on a bare host:port expect.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        with _session_lock:
            _session = _session or boto3.session.Session()
            self._client: Any = _session.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
            self._credentials = _session.get_credentials()  # None: requests go unsigned
        # Where a key's object is, as the client addresses it (path or virtual-host style).
        probe = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "KEY"}, ExpiresIn=60
        )
        self._object_url = probe.split("?", 1)[0].removesuffix("KEY")
        self._region = self._client.meta.region_name
        self._http = _pool_for(self._object_url)
        try:
            self._client.head_bucket(Bucket=bucket)
        except ClientError as e:
            if _code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise self._no_bucket() from None
            if _code(e) != "403":  # may use objects yet not head the bucket: carry on
                raise

    @classmethod
    def from_url(cls, url: str) -> S3ChunkStore:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidError(f"invalid S3 chunk store URL {url!r}: use s3://bucket[/prefix]")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if unknown := set(query) - {"endpoint_url", "region"}:
            raise InvalidError(f"unknown parameters {sorted(unknown)} in chunk store URL {url!r}")
        endpoint_url, region = query.get("endpoint_url"), query.get("region")
        return cls(parts.netloc, parts.path, endpoint_url=endpoint_url, region=region)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def _no_bucket(self) -> NotFoundError:
        return NotFoundError(
            f"S3 bucket {self.bucket!r} does not exist (chunk store {self.url}); create it first"
        )

    def _no_key(self, key: str) -> NotFoundError:
        return NotFoundError(f"{key} is not in the chunk store at {self.url}")

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except ClientError as e:
            if _code(e) == "NoSuchBucket":
                raise self._no_bucket() from None
            if _code(e) in ("NoSuchKey", "404", "NotFound"):
                raise self._no_key(key) from None
            raise

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        request = AWSRequest(method="GET", url=self._object_url + quote(self._key(key), safe="/"))
        if start or length is not None:
            end = "" if length is None else start + length - 1
            request.headers["Range"] = f"bytes={start}-{end}"
        if self._credentials is not None:
            credentials = self._credentials.get_frozen_credentials()
            S3SigV4Auth(credentials, "s3", self._region).add_auth(request)
        try:
            response = self._http.request("GET", request.url, headers=dict(request.headers))
        except urllib3.exceptions.HTTPError as error:  # no answer at all, even after retries
            reason = getattr(error, "reason", None) or error
            raise ExecutionError(
                f"reading {key} from the chunk store at {self.url} failed: {reason}"
            ) from None
        # Some servers answer a range with 200 and a Content-Range (rclone's): that is the range.
        if response.status == 206 or "Content-Range" in response.headers:
            return response.data
        if response.status == 200:  # the whole value: a store that ignores ranges, or no range
            return response.data[start : None if length is None else start + length]
        if response.status == 416:  # the range starts past the end
            return b""
        code = _error_code(response.data)
        if code == "NoSuchBucket":
            raise self._no_bucket()
        if response.status == 404:
            raise self._no_key(key)
        raise ExecutionError(
            f"reading {key} from the chunk store at {self.url} failed: "
            f"HTTP {response.status} {code}".rstrip()
        )

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):  # HEAD has no body: a missing bucket reads as a missing key
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except NotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str) -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=base + prefix, PaginationConfig={"PageSize": self._page_size}
        )
        with self._errors(prefix):
            for page in pages:
                yield from (item["Key"][len(base) :] for item in page.get("Contents", []))

    def close(self) -> None:
        self._client.close()
        self._http.clear()


def _pool_for(url: str) -> urllib3.PoolManager:
    """The connection pool for GETs of `url`: through the proxy the environment names for it
    (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`: what boto3 honours too), trusting the certificates
    in `AWS_CA_BUNDLE` if it is set."""
    settings: dict[str, Any] = {
        "maxsize": 64,
        "retries": urllib3.Retry(
            total=5,
            backoff_factor=0.1,
            status_forcelist=(500, 502, 503, 504),
            raise_on_status=False,  # the last answer's status makes the error message
        ),
        "timeout": urllib3.Timeout(connect=10, read=60),
    }
    if bundle := os.environ.get("AWS_CA_BUNDLE"):
        settings["ca_certs"] = bundle
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.netloc):
        return urllib3.ProxyManager(proxy, **settings)
    return urllib3.PoolManager(**settings)


def _error_code(body: bytes) -> str:
    """The `<Code>` of an S3 error response ("" if it has none)."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    return body[start + 6 : end].decode(errors="replace") if 0 <= start < end else ""


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))
