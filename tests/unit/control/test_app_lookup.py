"""`AppStop` and `AppLogs` name the app a command gave when there is none, and logs of a stopped
app end; the control plane in process, served over gRPC and driven through the client."""

import re

import grpc
import pytest

from ember import errors
from ember.client import Connection
from ember.client.connection import error_from_rpc
from ember.control.server import ControlPlane
from ember.control.store import LogLine
from ember.proto import api_pb2

NO_SUCH_ID = "no app ap-garbage; see `ember app list --all` for the apps there are"
NO_SUCH_NAME = (
    "no running or deployed app named 'ghost'; see `ember app list` for the apps running now, "
    "and `ember app list --all` for the ids of stopped ones"
)


async def logs(conn: Connection, **request: object) -> list[str]:
    """The lines `AppLogs` sends, until it ends; its error as an ember error."""
    try:
        return [
            entry.data
            async for entry in conn.ember.AppLogs(api_pb2.AppLogsRequest(**request), timeout=10)
        ]
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from None


async def stop(conn: Connection, **request: str) -> str:
    response = await conn.call(conn.ember.AppStop, api_pb2.AppStopRequest(**request))
    return response.app_id


async def test_stopping_an_unknown_app_id_is_not_found_naming_it(conn: Connection) -> None:
    with pytest.raises(errors.NotFoundError, match=re.escape(NO_SUCH_ID)):
        await stop(conn, app_id="ap-garbage")


async def test_stopping_a_name_with_no_live_app_is_not_found_naming_it(conn: Connection) -> None:
    with pytest.raises(errors.NotFoundError, match=re.escape(NO_SUCH_NAME)):
        await stop(conn, name="ghost")


async def test_logs_of_an_unknown_app_id_are_not_found_naming_it(conn: Connection) -> None:
    with pytest.raises(errors.NotFoundError, match=re.escape(NO_SUCH_ID)):
        await logs(conn, app_id="ap-garbage", follow=True)


async def test_logs_of_a_name_with_no_live_app_are_not_found_naming_it(conn: Connection) -> None:
    with pytest.raises(errors.NotFoundError, match=re.escape(NO_SUCH_NAME)):
        await logs(conn, name="ghost", follow=True)


async def test_an_app_stops_by_id_and_by_name(conn: Connection, plane: ControlPlane) -> None:
    first = (await conn.call(conn.ember.AppCreate, api_pb2.AppCreateRequest(name="one"))).app_id
    second = (await conn.call(conn.ember.AppCreate, api_pb2.AppCreateRequest(name="two"))).app_id
    assert await stop(conn, app_id=first) == first
    assert await stop(conn, name="two") == second
    for app_id in (first, second):
        assert (await plane.store.apps.get(app_id)).state == api_pb2.APP_STATE_STOPPED
    # Once stopped, the name no longer finds it; the id still does (stopping again is harmless).
    with pytest.raises(errors.NotFoundError, match="no running or deployed app named 'two'"):
        await stop(conn, name="two")
    assert await stop(conn, app_id=second) == second


async def test_following_the_logs_of_a_stopped_app_ends_after_its_lines(
    conn: Connection, plane: ControlPlane
) -> None:
    app_id = (await conn.call(conn.ember.AppCreate, api_pb2.AppCreateRequest(name="done"))).app_id
    await plane.logs.append([LogLine(0, app_id, "square", "ta-1", 1, "squaring 4\n", 1.0)])
    await stop(conn, app_id=app_id)
    assert await logs(conn, app_id=app_id, follow=True) == ["squaring 4\n"]
