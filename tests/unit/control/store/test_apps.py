"""Apps and their functions in the store: deploy versions, lookups by name, stopping."""

import pytest

from ember import errors
from ember.proto import api_pb2

EPHEMERAL = api_pb2.APP_STATE_EPHEMERAL
DETACHED = api_pb2.APP_STATE_DETACHED
DEPLOYED = api_pb2.APP_STATE_DEPLOYED
STOPPED = api_pb2.APP_STATE_STOPPED


def definition(name: str = "square", **fields) -> api_pb2.FunctionDefinition:
    return api_pb2.FunctionDefinition(name=name, module="hello", qualname=name, **fields)


async def test_create_makes_a_live_app_with_its_times(store) -> None:
    app_id = await store.apps.create("hello", EPHEMERAL, 7.0)
    app = await store.apps.get(app_id)
    assert app_id.startswith("ap-")
    assert (app.name, app.state, app.version, app.created_at, app.last_heartbeat_at) == (
        "hello",
        EPHEMERAL,
        0,
        7.0,
        7.0,
    )


async def test_get_unknown_app_is_not_found(store) -> None:
    with pytest.raises(errors.NotFoundError, match="ap-missing"):
        await store.apps.get("ap-missing")


async def test_publish_attaches_source_and_functions(store) -> None:
    app_id = await store.apps.create("hello", EPHEMERAL, 1.0)
    ids = await store.apps.publish(
        app_id, "bl-src", [definition("square", is_generator=True), definition("cube")]
    )
    assert set(ids) == {"square", "cube"}
    assert (await store.apps.get(app_id)).source_blob_id == "bl-src"
    function = await store.apps.function(ids["square"])
    assert (function.app_id, function.definition.name) == (app_id, "square")
    assert function.definition.is_generator is True
    assert {f.function_id for f in await store.apps.functions_of([app_id])} == set(ids.values())


async def test_publish_to_a_stopped_app_is_invalid(store) -> None:
    app_id = await store.apps.create("hello", EPHEMERAL, 1.0)
    await store.apps.stop([app_id], 2.0)
    with pytest.raises(errors.InvalidError, match=r"'hello'.*has stopped"):
        await store.apps.publish(app_id, "bl-src", [definition()])


async def test_function_unknown_id_is_not_found(store) -> None:
    with pytest.raises(errors.NotFoundError, match="fu-missing"):
        await store.apps.function("fu-missing")


async def test_deploy_numbers_versions_from_one_and_stops_the_previous(store) -> None:
    first, _, replaced_first = await store.apps.deploy("svc", "bl-1", [definition()], 1.0)
    second, _, replaced_second = await store.apps.deploy("svc", "bl-2", [definition()], 2.0)
    third, _, replaced_third = await store.apps.deploy("svc", "bl-3", [definition()], 3.0)
    assert (first.version, second.version, third.version) == (1, 2, 3)
    assert replaced_first == []
    assert replaced_second == [first.app_id]
    assert replaced_third == [second.app_id]
    assert (await store.apps.get(first.app_id)).state == STOPPED
    assert (await store.apps.get(second.app_id)).state == STOPPED
    assert (third.state, third.source_blob_id) == (DEPLOYED, "bl-3")


async def test_deploy_versions_are_per_name(store) -> None:
    await store.apps.deploy("one", "", [definition()], 1.0)
    other, _, replaced = await store.apps.deploy("two", "", [definition()], 2.0)
    assert (other.version, replaced) == (1, [])


async def test_find_live_prefers_the_deployed_version_over_a_newer_run(store) -> None:
    deployed, _, _ = await store.apps.deploy("svc", "", [definition()], 1.0)
    await store.apps.create("svc", EPHEMERAL, 5.0)
    assert (await store.apps.find_live("svc")).app_id == deployed.app_id


async def test_find_live_without_a_deploy_takes_the_newest_run(store) -> None:
    await store.apps.create("svc", EPHEMERAL, 1.0)
    newer = await store.apps.create("svc", DETACHED, 2.0)
    assert (await store.apps.find_live("svc")).app_id == newer


async def test_find_live_skips_stopped_apps(store) -> None:
    app_id = await store.apps.create("svc", EPHEMERAL, 1.0)
    await store.apps.stop([app_id], 2.0)
    with pytest.raises(errors.NotFoundError, match=r"'svc'.*ember deploy"):
        await store.apps.find_live("svc")


async def test_find_function_returns_the_deployed_function(store) -> None:
    _, ids, _ = await store.apps.deploy("svc", "", [definition("square")], 1.0)
    function = await store.apps.find_function("svc", "square")
    assert function.function_id == ids["square"]


async def test_find_function_of_an_unknown_app_names_the_app(store) -> None:
    with pytest.raises(errors.NotFoundError, match="no running or deployed app named 'nope'"):
        await store.apps.find_function("nope", "square")


async def test_find_function_unknown_function_names_app_and_function(store) -> None:
    await store.apps.deploy("svc", "", [definition("square")], 1.0)
    with pytest.raises(errors.NotFoundError, match="app 'svc' has no function named 'cube'"):
        await store.apps.find_function("svc", "cube")


async def test_stop_returns_only_the_apps_that_were_live(store) -> None:
    live = await store.apps.create("a", EPHEMERAL, 1.0)
    stopped = await store.apps.create("b", EPHEMERAL, 1.0)
    await store.apps.stop([stopped], 2.0)
    assert await store.apps.stop([live, stopped], 3.0) == [live]
    assert (await store.apps.get(live)).state == STOPPED


async def test_list_hides_stopped_apps_unless_asked(store) -> None:
    live = await store.apps.create("a", EPHEMERAL, 1.0)
    stopped = await store.apps.create("b", EPHEMERAL, 2.0)
    await store.apps.stop([stopped], 3.0)
    assert [a.app_id for a in await store.apps.list(include_stopped=False)] == [live]
    assert [a.app_id for a in await store.apps.list(include_stopped=True)] == [live, stopped]


async def test_ephemeral_silent_since_finds_quiet_ephemeral_apps_only(store) -> None:
    quiet = await store.apps.create("quiet", EPHEMERAL, 1.0)
    chatty = await store.apps.create("chatty", EPHEMERAL, 1.0)
    await store.apps.create("detached", DETACHED, 1.0)
    await store.apps.deploy("deployed", "", [], 1.0)
    await store.apps.heartbeat([chatty], 50.0)
    assert await store.apps.ephemeral_silent_since(40.0) == [quiet]
    assert await store.apps.ephemeral_silent_since(1.0) == []


async def test_publishing_again_adds_only_what_is_missing(store) -> None:
    app_id = await store.apps.create("again", api_pb2.APP_STATE_EPHEMERAL, 1.0)
    first = await store.apps.publish(app_id, "", [api_pb2.FunctionDefinition(name="f")])
    second = await store.apps.publish(
        app_id, "", [api_pb2.FunctionDefinition(name="f"), api_pb2.FunctionDefinition(name="g")]
    )
    assert second["f"] == first["f"]
    assert set(second) == {"f", "g"}


async def test_creating_again_with_the_same_client_key_gives_the_same_app(store) -> None:
    first = await store.apps.create("x", api_pb2.APP_STATE_EPHEMERAL, 1.0, "k" * 32)
    again = await store.apps.create("x", api_pb2.APP_STATE_EPHEMERAL, 2.0, "k" * 32)
    other = await store.apps.create("x", api_pb2.APP_STATE_EPHEMERAL, 2.0, "")
    assert first == again != other
    assert len(await store.apps.list(include_stopped=True)) == 2
