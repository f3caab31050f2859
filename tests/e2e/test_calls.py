"""Every way of calling a function, through real containers."""

from typing import Any

import pytest

import ember


def test_remote_returns_the_result(basics: Any) -> None:
    assert basics.square.remote(4) == 16


def test_local_runs_here(basics: Any) -> None:
    assert basics.square.local(3) == 9


def test_keyword_arguments(basics: Any) -> None:
    assert basics.add.remote(2, b=5) == 7


def test_async_function(basics: Any) -> None:
    assert basics.async_double.remote(21) == 42


def test_map_keeps_input_order(basics: Any) -> None:
    assert list(basics.square.map(range(50))) == [x * x for x in range(50)]


def test_map_unordered_yields_everything(basics: Any) -> None:
    results = list(basics.hostname_after.map([0.3, 0.0, 0.0], order_outputs=False))
    assert len(results) == 3


def test_map_of_nothing_returns_at_once(basics: Any) -> None:
    assert list(basics.square.map([])) == []


def test_map_with_several_iterables_and_kwargs(basics: Any) -> None:
    assert list(basics.add.map([1, 2], [10, 20])) == [11, 22]
    assert list(basics.add.map([1, 2], kwargs={"b": 100})) == [101, 102]


def test_starmap(basics: Any) -> None:
    assert list(basics.add.starmap([(1, 2), (3, 4)])) == [3, 7]


def test_map_return_exceptions(basics: Any) -> None:
    results = list(basics.fail.map(range(3), return_exceptions=True))
    assert [type(r) for r in results] == [ValueError] * 3
    assert str(results[2]) == "bad input 2"


def test_map_raises_the_first_failure(basics: Any) -> None:
    with pytest.raises(ValueError, match="bad input"):
        list(basics.fail.map(range(3)))


def test_for_each(basics: Any) -> None:
    assert basics.square.for_each(range(5)) is None


def test_spawn_then_get(basics: Any) -> None:
    call = basics.square.spawn(5)
    assert isinstance(call, ember.FunctionCall)
    assert call.get(timeout=60) == 25


def test_get_times_out_while_running(basics: Any) -> None:
    call = basics.sleep_for.spawn(3)
    with pytest.raises(ember.TimeoutError):
        call.get(timeout=0.2)
    assert ember.FunctionCall.from_id(call.object_id).get(timeout=60) == 3


def test_gather(basics: Any) -> None:
    calls = [basics.square.spawn(i) for i in range(4)]
    assert ember.FunctionCall.gather(*calls) == [0, 1, 4, 9]


def test_cancel(basics: Any) -> None:
    call = basics.sleep_for.spawn(30)
    call.cancel()
    with pytest.raises(ember.InputCancelledError):
        call.get(timeout=30)


def test_generator_streams_items(basics: Any) -> None:
    assert list(basics.countdown.remote_gen(4)) == [4, 3, 2, 1]


def test_generator_cannot_be_called_with_remote(basics: Any) -> None:
    with pytest.raises(ember.InvalidError, match="remote_gen"):
        basics.countdown.remote(3)


def test_large_argument_and_result_travel_as_blobs(basics: Any) -> None:
    payload = b"a" * (3 << 20)  # over the 2 MiB inline limit
    assert basics.size_of.remote(payload) == len(payload)
    assert len(basics.make_bytes.remote(3 << 20)) == 3 << 20


async def test_aio_variants(basics: Any) -> None:
    assert await basics.square.remote.aio(6) == 36
    assert [x async for x in basics.square.map.aio(range(4))] == [0, 1, 4, 9]
    assert [x async for x in basics.countdown.remote_gen.aio(2)] == [2, 1]
    call = await basics.square.spawn.aio(7)
    assert await call.get.aio(timeout=60) == 49
    assert await ember.FunctionCall.gather.aio(call) == [49]


def test_map_reads_its_inputs_lazily(basics: Any) -> None:
    """A long map holds at most a window of inputs, never the whole iterable."""
    from ember.sdk._map import BATCH_INPUTS, MAX_PENDING

    total = 2 * MAX_PENDING + 5000
    consumed = 0

    def numbers() -> Any:
        nonlocal consumed
        for i in range(total):
            consumed = i + 1
            yield i

    most_ahead = received = 0
    for received, value in enumerate(basics.add.map(numbers()), 1):
        most_ahead = max(most_ahead, consumed - received)
        assert value == received - 1
    assert received == total
    assert most_ahead <= MAX_PENDING + BATCH_INPUTS


def test_stopping_a_map_early_cancels_what_has_not_run(basics: Any) -> None:
    import sqlite3

    from ember import config

    results = basics.sleep_for.map([0.05] * 300)
    assert next(results) == 0.05
    results.close()
    with sqlite3.connect(config.data_dir() / "ember.db") as db:
        cancelled, unfinished = db.execute(
            "SELECT c.cancelled, (SELECT count(*) FROM inputs i WHERE i.call_id = c.id"
            " AND i.state IN ('queued', 'leased'))"
            " FROM calls c ORDER BY c.created_at DESC LIMIT 1"
        ).fetchone()
    assert cancelled == 1
    assert unfinished == 0
