"""Running a prefetch: batches fetched ahead, items handled earliest first, errors."""

from __future__ import annotations

import threading
import time

import pytest

from ember.imagefs import prefetch


def test_the_earliest_item_that_arrived_is_handled_first() -> None:
    first_batch_fetched = threading.Event()
    handled: list[int] = []

    def fetch(batch: int) -> list[tuple[int, int]]:
        if batch == 0:  # the first batch arrives after the second
            time.sleep(0.1)
            first_batch_fetched.set()
        return [(batch * 10 + i, batch * 10 + i) for i in range(3)]

    def handle(item: int) -> None:
        if item == 10:  # while it is handled, the first batch arrives
            assert first_batch_fetched.wait(5)
            time.sleep(0.1)
        handled.append(item)

    prefetch.run([0, 1], fetch, handle, workers=1, ahead=2)
    assert handled == [10, 0, 1, 2, 11, 12]


def test_no_more_than_ahead_batches_are_out_at_once() -> None:
    out, most = 0, 0
    lock = threading.Lock()

    def fetch(batch: int) -> list[tuple[int, int]]:
        nonlocal out, most
        with lock:
            out += 1
            most = max(most, out)
        return [(batch * 10 + i, batch) for i in range(2)]

    def handle(batch: int) -> None:
        nonlocal out
        time.sleep(0.01)
        with lock:
            out -= 0.5  # two items a batch

    prefetch.run(range(8), fetch, handle, workers=2, ahead=3)
    assert most <= 3 and out == 0


def test_after_a_failed_fetch_what_arrived_is_handled_nothing_more_is_fetched() -> None:
    fetched: list[int] = []
    handled: list[int] = []

    def fetch(batch: int) -> list[tuple[int, int]]:
        fetched.append(batch)
        if batch == 1:
            raise ConnectionError("the store went away")
        return [(batch, batch)]

    with pytest.raises(ConnectionError):
        prefetch.run(range(5), fetch, handled.append, workers=2, ahead=1)
    assert fetched == [0, 1] and handled == [0]


def test_an_item_that_fails_is_reported_and_the_rest_are_handled() -> None:
    handled: list[int] = []

    def handle(item: int) -> None:
        if item == 2:
            raise OSError("no space left")
        handled.append(item)

    with pytest.raises(OSError):
        prefetch.run([0], lambda _: [(i, i) for i in range(4)], handle, workers=1, ahead=1)
    assert handled == [0, 1, 3]
