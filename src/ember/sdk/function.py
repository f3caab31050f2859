"""`ember.Function` and `ember.FunctionCall`: thin handles over calls to the control plane.

`@app.function` records a `FunctionSpec` and returns a `Function`. The function can run only once
its app runs (`with app.run()`, `ember run`) or is deployed (`Function.from_name`): that is when
it learns its id. Every method is written once as a coroutine; `f.remote(x)` blocks and
`await f.remote.aio(x)` does not.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from ember import errors
from ember.sdk import code_kinds
from ember.sdk._sync import run_async, run_blocking, synchronize
from ember.sdk.output import note_waiting
from ember.sdk.retries import Retries

if TYPE_CHECKING:
    from ember.client import Connection
    from ember.proto import api_pb2
    from ember.sdk.image import Image

DEFAULT_CPU = 0.125
DEFAULT_MEMORY_MB = 128
MAX_EPHEMERAL_DISK_MB = 3 << 20  # 3 TiB
GET_POLL_S = 30.0


def _request_and_limit(
    value: float | tuple[float, float] | None, default: float, what: str
) -> tuple[float, float]:
    """`cpu=`/`memory=`: a number is both request and limit; a pair is (request, limit)."""
    if value is None:
        return default, 0.0
    request, limit = value if isinstance(value, tuple) else (value, value)
    if request <= 0 or limit < request:
        raise errors.InvalidError(
            f"{what} must be positive, and a (request, limit) pair needs limit >= request; "
            f"got {value!r}"
        )
    return float(request), float(limit)


def module_name(raw_f: Callable[..., Any]) -> str:
    """The name the container imports the function's module by (a script's file stem)."""
    name = raw_f.__module__
    if name == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if main_file is None:
            raise errors.InvalidError(
                f"{raw_f.__qualname__} is defined in an interactive session; ember runs functions "
                "from files (put it in a .py file)"
            )
        return os.path.splitext(os.path.basename(main_file))[0]
    return name


class FunctionSpec:
    """What `@app.function(...)` recorded: plain data, checked when the decorator runs. (A plain
    class, not a dataclass: every container makes one at its cold start, and importing
    `dataclasses` costs more than the rest of the SDK does there.)"""

    __slots__ = (
        "cpu",
        "cpu_limit",
        "ephemeral_disk_mb",
        "image",
        "is_generator",
        "max_containers",
        "memory_limit_mb",
        "memory_mb",
        "min_containers",
        "module",
        "name",
        "qualname",
        "retries",
        "scaledown_window_s",
        "timeout_s",
    )

    def __init__(
        self,
        raw_f: Callable[..., Any],
        *,
        module: str,
        name: str | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        timeout: float = 300,
        retries: int | Retries | None = None,
        min_containers: int = 0,
        max_containers: int | None = None,
        scaledown_window: float = 60,
        image: Image | None = None,
        ephemeral_disk: int | None = None,
    ) -> None:
        cpu_request, cpu_limit = _request_and_limit(cpu, DEFAULT_CPU, "cpu")
        memory_request, memory_limit = _request_and_limit(memory, DEFAULT_MEMORY_MB, "memory")
        if not 1 <= timeout <= 24 * 3600:
            raise errors.InvalidError(f"timeout must be from 1 to 86400 seconds, not {timeout}")
        if min_containers < 0 or (
            max_containers is not None and max_containers < max(1, min_containers)
        ):
            raise errors.InvalidError(
                "min_containers must be >= 0 and max_containers >= max(1, min_containers); "
                f"got min_containers={min_containers}, max_containers={max_containers}"
            )
        if scaledown_window < 1:
            raise errors.InvalidError(
                f"scaledown_window must be at least 1 second, not {scaledown_window}"
            )
        if ephemeral_disk is not None and not (
            isinstance(ephemeral_disk, int) and 1 <= ephemeral_disk <= MAX_EPHEMERAL_DISK_MB
        ):
            raise errors.InvalidError(
                f"ephemeral_disk is MiB of disk, a whole number from 1 to {MAX_EPHEMERAL_DISK_MB}; "
                f"got {ephemeral_disk!r}"
            )
        self.name: str = name or raw_f.__name__
        self.module: str = module
        self.qualname: str = raw_f.__qualname__
        self.cpu: float = cpu_request
        self.cpu_limit: float = cpu_limit
        self.memory_mb: int = int(memory_request)
        self.memory_limit_mb: int = int(memory_limit)
        self.ephemeral_disk_mb: int = ephemeral_disk or 0  # 0: the worker's default
        self.timeout_s: float = float(timeout)
        self.retries: Retries = Retries.of(retries)
        self.min_containers: int = min_containers
        self.max_containers: int = max_containers or 0
        self.scaledown_window_s: float = float(scaledown_window)
        self.is_generator: bool = code_kinds.is_generator_function(raw_f)
        self.image: Image | None = image  # None: the app's image

    def to_proto(self, image_id: str = "", image_key: str = "") -> api_pb2.FunctionDefinition:
        from ember.proto import api_pb2

        return api_pb2.FunctionDefinition(
            name=self.name,
            image_id=image_id,
            image_key=image_key,
            module=self.module,
            qualname=self.qualname,
            resources=api_pb2.Resources(
                cpu=self.cpu,
                memory_mb=self.memory_mb,
                cpu_limit=self.cpu_limit,
                memory_limit_mb=self.memory_limit_mb,
                ephemeral_disk_mb=self.ephemeral_disk_mb,
            ),
            timeout_s=self.timeout_s,
            retries=self.retries.to_proto(),
            autoscaling=api_pb2.Autoscaling(
                min_containers=self.min_containers,
                max_containers=self.max_containers,
                scaledown_window_s=self.scaledown_window_s,
            ),
            is_generator=self.is_generator,
        )


class Function:
    """A function that runs in containers. Made by `@app.function` or `Function.from_name`."""

    def __init__(
        self,
        raw_f: Callable[..., Any] | None,
        spec: FunctionSpec | None,
    ) -> None:
        self._raw_f = raw_f
        self.spec = spec
        self._function_id: str | None = None
        self._is_generator = spec.is_generator if spec else False
        self._lookup: tuple[str, str] | None = None
        if raw_f is not None:
            self.__doc__ = raw_f.__doc__
            self.__name__ = raw_f.__name__
            self.__qualname__ = raw_f.__qualname__
            self.__module__ = raw_f.__module__

    def __repr__(self) -> str:
        name = self.spec.name if self.spec else (self._lookup or ("?", "?"))[1]
        return f"<ember.Function {name}>"

    @property
    def object_id(self) -> str | None:
        return self._function_id

    @classmethod
    def from_name(cls, app_name: str, name: str) -> Function:
        """A handle on a function of a deployed app, looked up when first called.

        square = ember.Function.from_name("hello", "square")
        square.remote(7)
        """
        function = cls(None, None)
        function._lookup = (app_name, name)
        return function

    def get_raw_f(self) -> Callable[..., Any]:
        if self._raw_f is None:
            raise errors.InvalidError(f"{self!r} was looked up by name; it has no local code")
        return self._raw_f

    def _hydrate(self, function_id: str | None) -> None:
        self._function_id = function_id

    async def _resolve(self) -> tuple[Connection, str]:
        from ember.proto import api_pb2
        from ember.sdk._calls import connection

        if self._function_id is None and self._lookup is not None:
            conn = await connection()
            app_name, name = self._lookup
            response = await conn.call(
                conn.ember.FunctionGet,
                api_pb2.FunctionGetRequest(app_name=app_name, function_name=name),
            )
            self._function_id = response.function_id
            self._is_generator = response.is_generator
        if self._function_id is None:
            name = self.spec.name if self.spec else "?"
            raise errors.ExecutionError(
                f"function {name!r} cannot run remotely: its app is not running. Call it inside "
                "`with app.run():` or through `ember run`, or deploy the app with `ember deploy` "
                "and use ember.Function.from_name(...)"
            )
        return await connection(), self._function_id

    # ---- calling

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here, in this process."""
        return self.get_raw_f()(*args, **kwargs)

    async def _submit(
        self, kind: int, args: tuple[Any, ...], kwargs: dict[str, Any], wait_s: float
    ) -> tuple[Connection, str, list[api_pb2.Output]]:
        from ember.proto import api_pb2
        from ember.sdk._calls import encode_args, new_call_id

        conn, function_id = await self._resolve()
        call_id = new_call_id()
        response = await conn.calls.call(
            api_pb2.FunctionCallRequest(
                call_id=call_id,
                function_id=function_id,
                kind=kind,
                inputs=[api_pb2.Input(idx=0, args=await encode_args(conn, args, kwargs))],
                inputs_complete=True,
                wait_s=wait_s,
            )
        )
        note_waiting(response.waiting)
        return conn, call_id, list(response.outputs)

    def _no_generator(self, method: str) -> None:
        if self._is_generator:
            raise errors.InvalidError(
                f"{self!r} is a generator function; use .remote_gen() instead of .{method}()"
            )

    @synchronize
    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function in a container and return its result (or raise its exception)."""
        from ember.proto import api_pb2

        await self._resolve()  # a function found by name learns here whether it is a generator
        self._no_generator("remote")
        conn, call_id, outputs = await self._submit(
            api_pb2.CALL_KIND_REMOTE, args, kwargs, wait_s=GET_POLL_S
        )
        return await FunctionCall(call_id, outputs)._result(conn, timeout=None)

    @synchronize
    async def spawn(self, *args: Any, **kwargs: Any) -> FunctionCall:
        """Start the function in a container and return at once; `.get()` waits for the result."""
        from ember.proto import api_pb2

        await self._resolve()
        self._no_generator("spawn")
        _, call_id, _ = await self._submit(api_pb2.CALL_KIND_SPAWN, args, kwargs, wait_s=0)
        return FunctionCall(call_id)

    @synchronize
    async def remote_gen(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Run a generator function in a container, yielding its items as they arrive."""
        from ember.proto import api_pb2
        from ember.sdk._calls import decode_result

        await self._resolve()
        if not self._is_generator:
            raise errors.InvalidError(f"{self!r} is not a generator function; use .remote()")
        conn, call_id, outputs = await self._submit(api_pb2.CALL_KIND_REMOTE, args, kwargs, 0)
        after_seq = 0
        items: dict[int, api_pb2.Result] = {}
        next_item = 0
        while True:
            for output in outputs:
                after_seq = max(after_seq, output.seq)
                items[output.gen_index] = output.result
            while next_item in items:
                result = items.pop(next_item)
                if result.status == api_pb2.RESULT_STATUS_GENERATOR_DONE:
                    return
                yield await decode_result(conn, result)
                next_item += 1
            response = await conn.call(
                conn.ember.FunctionGetOutputs,
                api_pb2.FunctionGetOutputsRequest(
                    call_id=call_id, after_seq=after_seq, wait_s=GET_POLL_S
                ),
            )
            note_waiting(response.waiting)
            outputs = list(response.outputs)

    async def _fan_out(
        self,
        method: str,
        arguments: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        order_outputs: bool,
        return_exceptions: bool,
    ) -> AsyncIterator[Any]:
        """What `map`, `starmap` and `for_each` share: one call, its results streamed back."""
        from ember.sdk._map import map_outputs

        conn, function_id = await self._resolve()
        self._no_generator(method)
        # aclosing: a caller that stops early cancels what has not run, now, not at collection.
        outputs = map_outputs(
            conn,
            function_id,
            arguments,
            order_outputs=order_outputs,
            return_exceptions=return_exceptions,
        )
        async with contextlib.aclosing(outputs):
            async for value in outputs:
                yield value

    @synchronize
    async def map(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        """Run the function over the iterables in parallel containers, yielding the results.

        for y in square.map(range(100)): ...
        """
        arguments = ((args, kwargs or {}) for args in zip(*iterables, strict=False))
        results = self._fan_out(
            "map", arguments, order_outputs=order_outputs, return_exceptions=return_exceptions
        )
        async with contextlib.aclosing(results):
            async for value in results:
                yield value

    @synchronize
    async def starmap(
        self,
        input_iterator: Iterable[Iterable[Any]],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        """Like `map`, but each item of `input_iterator` is a tuple of arguments."""
        arguments = ((tuple(args), kwargs or {}) for args in input_iterator)
        results = self._fan_out(
            "starmap", arguments, order_outputs=order_outputs, return_exceptions=return_exceptions
        )
        async with contextlib.aclosing(results):
            async for value in results:
                yield value

    @synchronize
    async def for_each(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        ignore_exceptions: bool = False,
    ) -> None:
        """Run the function over the iterables for its effects, discarding the results."""
        arguments = ((args, kwargs or {}) for args in zip(*iterables, strict=False))
        async for _ in self._fan_out(
            "for_each", arguments, order_outputs=False, return_exceptions=ignore_exceptions
        ):
            pass


class FunctionCall:
    """A call started with `.spawn()`: wait for it, cancel it, or find it again by id."""

    def __init__(self, call_id: str, outputs: list[api_pb2.Output] | None = None) -> None:
        self.object_id = call_id
        self._outputs = outputs or []

    def __repr__(self) -> str:
        return f"<ember.FunctionCall {self.object_id}>"

    @staticmethod
    def from_id(call_id: str) -> FunctionCall:
        return FunctionCall(call_id)

    async def _result(self, conn: Connection, timeout: float | None) -> Any:
        import asyncio

        from ember.proto import api_pb2
        from ember.sdk._calls import decode_result

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        outputs = self._outputs
        while not outputs:
            wait_s = GET_POLL_S if deadline is None else max(0.0, deadline - loop.time())
            response = await conn.call(
                conn.ember.FunctionGetOutputs,
                api_pb2.FunctionGetOutputsRequest(
                    call_id=self.object_id,
                    after_seq=0,
                    wait_s=min(wait_s, GET_POLL_S),
                    max_outputs=1,
                ),
            )
            note_waiting(response.waiting)
            outputs = list(response.outputs)
            if not outputs and deadline is not None and loop.time() >= deadline:
                raise errors.TimeoutError(
                    f"function call {self.object_id} did not finish within {timeout} s"
                )
        self._outputs = outputs
        return await decode_result(conn, outputs[0].result)

    @synchronize
    async def get(self, timeout: float | None = None) -> Any:
        """The call's result, waiting up to `timeout` seconds (forever when None)."""
        from ember.sdk._calls import connection

        return await self._result(await connection(), timeout)

    @synchronize
    async def cancel(self) -> None:
        """Stop the call; its `.get()` raises `ember.InputCancelledError`."""
        from ember.proto import api_pb2
        from ember.sdk._calls import connection

        conn = await connection()
        await conn.call(
            conn.ember.FunctionCallCancel,
            api_pb2.FunctionCallCancelRequest(call_id=self.object_id),
        )

    @staticmethod
    def gather(*calls: FunctionCall) -> list[Any]:
        """Wait for several calls; their results in the order given."""
        return run_blocking(_gather(calls))


async def _gather(calls: Iterable[FunctionCall]) -> list[Any]:
    import asyncio

    from ember.sdk._calls import connection

    conn = await connection()
    return list(await asyncio.gather(*(call._result(conn, None) for call in calls)))


async def _gather_aio(*calls: FunctionCall) -> list[Any]:
    return await run_async(_gather(calls))


FunctionCall.gather.aio = _gather_aio  # type: ignore[attr-defined]
