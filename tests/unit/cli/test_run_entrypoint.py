"""`ember run` calls a local entrypoint to the end, an `async def` one included."""

import threading

import ember
from ember.cli.run_commands import call_entrypoint
from ember.sdk._sync import synchronize

app = ember.App("entrypoints")


class Service:
    """Stands in for a Function: SDK methods with blocking and `.aio` forms."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    @synchronize
    async def double(self, x: int) -> int:
        self.threads.add(threading.current_thread().name)
        return 2 * x

    @synchronize
    async def count(self, n: int):
        for i in range(n):
            yield i


service = Service()
seen: list[object] = []


@app.local_entrypoint()
async def async_main(n: int = 3) -> str:
    seen.append(threading.current_thread().name)
    seen.append(await service.double.aio(21))
    seen.append([x async for x in service.count.aio(n)])
    seen.append(service.double(5))  # a blocking call still works inside one
    return "done"


@app.local_entrypoint(name="plain")
def sync_main(n: int) -> int:
    return service.double(n)


def test_an_async_entrypoint_runs_to_the_end_with_its_aio_calls() -> None:
    seen.clear()
    assert call_entrypoint(async_main, {"n": 2}) == "done"
    # The user's coroutine ran in a loop of its own, in the caller's thread; the SDK's work ran
    # on the SDK's loop.
    assert seen == [threading.current_thread().name, 42, [0, 1], 10]
    assert service.threads == {"ember-sdk"}


def test_a_plain_entrypoint_is_called() -> None:
    assert call_entrypoint(sync_main, {"n": 4}) == 8


def test_an_entrypoint_is_known_by_the_name_it_was_registered_under() -> None:
    assert sync_main.name == "plain"
    assert app.registered_entrypoints["plain"] is sync_main
    assert async_main.name == "async_main"
