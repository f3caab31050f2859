"""Every way of calling a function, through real containers."""

import contextlib
import os
import random
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import ember
from ember import config


def test_remote_returns_the_result(basics: Any) -> None:
    assert basics.square.remote(4) == 16


def test_local_runs_here(basics: Any) -> None:
    assert basics.square.local(3) == 9


def test_keyword_arguments(basics: Any) -> None:
    assert basics.add.remote(2, b=5) == 7


def test_async_function(basics: Any) -> None:
    assert basics.async_double.remote(21) == 42


def test_a_result_only_cloudpickle_can_pickle_comes_back_by_value(basics: Any) -> None:
    assert basics.make_adder.remote(2)(3) == 5


def test_a_plain_result_comes_back_whole(basics: Any) -> None:
    assert basics.plain_record.remote(4) == {
        "n": 4,
        "squares": [0, 1, 4, 9],
        "raw": b"\x00\x01\x02\x03",
    }


def test_map_keeps_input_order(basics: Any) -> None:
    assert list(basics.square.map(range(50))) == [x * x for x in range(50)]


def _release(tag: str) -> None:
    """Let a held `held_until_released` input finish: put /tmp/<tag>.go into the container whose
    /tmp holds <tag>.held (the file only that input makes), through a process of the container."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            tmp = Path(f"/proc/{pid}/root/tmp")
            with contextlib.suppress(OSError):
                if (tmp / f"{tag}.held").exists():
                    (tmp / f"{tag}.go").touch()
                    return
        time.sleep(0.05)
    raise AssertionError(f"no container is running the held input {tag}")


def test_map_unordered_yields_in_completion_order(basics: Any) -> None:
    # The first input cannot finish until the test has received the two after it: ordered,
    # the map would hold those back behind it (and the held input gives up only after 60 s).
    held = f"held-{uuid.uuid4().hex}"
    results = basics.held_until_released.map(
        [held, "fast-1", "fast-2"], [True, False, False], order_outputs=False
    )
    assert sorted([next(results), next(results)]) == ["fast-1", "fast-2"]
    _release(held)
    assert list(results) == [held]


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


def _squares_logged(numbers: range) -> list[int]:
    """Those of `numbers` that `square` printed a line for (repeats kept), once each of them has
    been logged or after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        with sqlite3.connect(config.data_dir() / "ember.db") as db:
            lines = db.execute(
                "SELECT data FROM logs WHERE function_name = 'square' AND data LIKE 'squaring %'"
            ).fetchall()
        printed = sorted(x for (line,) in lines if (x := int(line.split()[1])) in numbers)
        if len(printed) >= len(numbers) or time.monotonic() > deadline:
            return printed
        time.sleep(0.05)


def test_for_each(basics: Any) -> None:
    first = random.randrange(10**12, 10**13)  # numbers no other test squares
    numbers = range(first, first + 5)
    assert basics.square.for_each(numbers) is None
    assert _squares_logged(numbers) == list(numbers)  # each input ran, once


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
