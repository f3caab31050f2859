"""Chunk store fixtures: `store` is each backend in turn, fresh for every test.

The S3 backend talks to a real moto S3 server on 127.0.0.1, started once per test session, with a
new bucket per test; nothing leaves the machine.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from ember.imagefs.s3_store import S3ChunkStore
from ember.imagefs.store import ChunkStore, LocalChunkStore


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        # Dummy credentials, and nothing from the user's AWS set-up or proxies leaking in.
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_CONFIG_FILE", "/nonexistent")
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_admin(s3_endpoint: str) -> Iterator[Any]:
    """A plain boto3 client on the moto server, for what stores never do (making buckets)."""
    client: Any = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    yield client
    client.close()


@pytest.fixture
def s3_bucket(s3_admin: Any) -> str:
    """A new, empty bucket on the moto server."""
    name = f"ember-test-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3", "s3-prefix"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChunkStore]:
    backend: ChunkStore
    if request.param == "local":
        backend = LocalChunkStore(tmp_path / "store")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        prefix = "some/prefix" if request.param == "s3-prefix" else ""
        backend = S3ChunkStore(bucket, prefix, endpoint_url=endpoint, region="us-east-1")
    yield backend
    backend.close()
