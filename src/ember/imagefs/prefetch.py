"""Running a prefetch: fetch batches on threads of their own, handle what arrived earliest first.

A recording is read from its pack in batches (ranges of the pack), `ahead` of them at once, each
on a thread of its own: they wait on the network, not the CPU. What a batch brings is handed to
`workers` threads, each taking the earliest item that has arrived (by its place in the
recording): a batch that arrives before an earlier one, or an item that takes long to handle,
holds no earlier item up. The starting container reads right behind the prefetch's front, so
the front goes first. A batch is fetched once fewer than `ahead` are fetched and not yet handled
whole, which bounds the memory a prefetch holds.

After an error, no more batches are fetched (a later read fetches what is left) and what has
arrived is still handled; `run` raises the first error once every thread is done.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Batch = TypeVar("Batch")
Item = TypeVar("Item")


@dataclass(frozen=True, order=True)
class _Arrived(Generic[Item]):
    place: int  # in the recording: the earliest is handled first
    batch: int = field(compare=False)  # which batch it came in
    item: Item = field(compare=False)


def run(
    batches: Iterable[Batch],
    fetch: Callable[[Batch], list[tuple[int, Item]]],
    handle: Callable[[Item], None],
    *,
    workers: int,
    ahead: int,
) -> None:
    """Fetch each batch (`fetch` gives its items, each with its place in the recording) and
    handle every item fetched, earliest first."""
    _Run(batches, fetch, handle).run(workers, ahead)


class _Run(Generic[Batch, Item]):
    def __init__(
        self,
        batches: Iterable[Batch],
        fetch: Callable[[Batch], list[tuple[int, Item]]],
        handle: Callable[[Item], None],
    ) -> None:
        self.todo = deque(enumerate(batches))
        self.fetch = fetch
        self.handle = handle
        self.changed = threading.Condition()
        self.arrived: list[_Arrived[Item]] = []  # a heap: fetched, not yet taken by a worker
        self.unhandled: dict[int, int] = {}  # a fetched batch -> its items not yet handled
        self.out = 0  # batches being fetched, or fetched and not handled whole
        self.errors: list[BaseException] = []
        self.getters: ThreadPoolExecutor | None = None

    def run(self, workers: int, ahead: int) -> None:
        with ThreadPoolExecutor(ahead, thread_name_prefix="ember-prefetch-get") as getters:
            self.getters = getters
            with self.changed:
                for _ in range(ahead):
                    self._fetch_next()
            with ThreadPoolExecutor(workers, thread_name_prefix="ember-prefetch") as pool:
                for worker in [pool.submit(self._work) for _ in range(workers)]:
                    worker.result()
        if self.errors:
            raise self.errors[0]

    def _fetch_next(self) -> None:
        """Called with `changed` held."""
        if self.todo and not self.errors:
            assert self.getters is not None
            self.out += 1
            self.getters.submit(self._fetch, *self.todo.popleft())

    def _fetch(self, number: int, batch: Batch) -> None:
        try:
            items, failed = self.fetch(batch), None
        except Exception as error:
            items, failed = [], error
        with self.changed:
            if failed is not None:
                self.errors.append(failed)
            for place, item in items:
                heapq.heappush(self.arrived, _Arrived(place, number, item))
            if items:
                self.unhandled[number] = len(items)
            else:
                self._batch_done()
            self.changed.notify_all()

    def _batch_done(self) -> None:
        self.out -= 1
        self._fetch_next()

    def _work(self) -> None:
        while True:
            with self.changed:
                while not self.arrived and self.out:
                    self.changed.wait()
                if not self.arrived:
                    return
                arrived = heapq.heappop(self.arrived)
            try:
                self.handle(arrived.item)
                failed = None
            except Exception as error:
                failed = error
            with self.changed:
                if failed is not None:
                    self.errors.append(failed)
                self.unhandled[arrived.batch] -= 1
                if not self.unhandled[arrived.batch]:
                    del self.unhandled[arrived.batch]
                    self._batch_done()
                self.changed.notify_all()
