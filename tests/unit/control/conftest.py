"""A real store on SQLite in the test's temporary directory, a fake clock, and functions to call."""

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ember.client import Connection
from ember.control.clock import FakeClock
from ember.control.server import ControlPlane
from ember.control.store import Store, sqlite_url
from ember.proto import api_pb2
from tests.unit.control.serving import serving

MakeFunction = Callable[..., Awaitable[str]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[Store]:
    opened = await Store.open(sqlite_url(tmp_path / "ember.db"))
    yield opened
    await opened.close()


@pytest.fixture
def make_function(store: Store, clock: FakeClock) -> MakeFunction:
    """`await make_function(definition)`: a live app holding one function; returns its id."""

    async def make(definition: api_pb2.FunctionDefinition | None = None) -> str:
        definition = definition or api_pb2.FunctionDefinition(name="square", module="app")
        app_id = await store.apps.create("app", api_pb2.APP_STATE_EPHEMERAL, clock.now())
        ids = await store.apps.publish(app_id, "", [definition])
        return ids[definition.name]

    return make


@pytest.fixture
async def plane(tmp_path) -> AsyncIterator[ControlPlane]:
    """A control plane in the test's process, on a fake clock."""
    opened = await ControlPlane.open(tmp_path / "control", clock=FakeClock())
    yield opened
    await opened.close()


@pytest.fixture
async def conn(plane: ControlPlane) -> AsyncIterator[Connection]:
    """A connection to `plane`, served over gRPC as `ember server` serves it."""
    async with serving(plane) as connection:
        yield connection
