"""`ember.App`: a named group of functions that run, deploy and stop together.

    app = ember.App("hello")

    @app.function(cpu=0.5, memory=256, timeout=60, retries=2)
    def square(x: int) -> int:
        return x * x

    @app.local_entrypoint()
    def main(n: int = 10):
        print(sum(square.map(range(n))))

`ember run hello.py` (or `with app.run():` in a script) makes an ephemeral app, sends its source and
function definitions to the control plane, and stops it afterwards. `ember deploy hello.py` makes a
new version of a deployed app that `Function.from_name` finds from any process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ember import errors
from ember.sdk._sync import run_blocking
from ember.sdk.function import Function, FunctionSpec, module_name
from ember.sdk.output import console, output_enabled, show_log
from ember.sdk.retries import Retries
from ember.sdk.value import Value

if TYPE_CHECKING:
    from ember.client import Connection
    from ember.sdk.image import Image

HEARTBEAT_S = 5.0
LOG_DRAIN_QUIET_S = 0.3  # at exit, keep showing logs until they have been quiet this long
LOG_DRAIN_MAX_S = 3.0


class LocalEntrypoint:
    """What `@app.local_entrypoint()` makes. Calling it calls the function: an `async def` one
    gives a coroutine to await, which `ember run` runs in an event loop of its own. (A plain
    class, not a dataclass: see `FunctionSpec`.)"""

    def __init__(
        self, raw_f: Callable[..., Any], app: App, registered_name: str | None = None
    ) -> None:
        self.raw_f = raw_f
        self.app = app
        self.registered_name = registered_name  # the `name=` it was registered under

    def __repr__(self) -> str:
        return f"<ember.LocalEntrypoint {self.name}>"

    @property
    def name(self) -> str:
        return self.registered_name or self.raw_f.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.raw_f(*args, **kwargs)


class DeployResult(Value):
    __slots__ = ("app_id", "version")

    def __init__(self, app_id: str, version: int) -> None:
        self.app_id = app_id
        self.version = version


class _RunningApp:
    """The live side of `app.run()`: heartbeats, and following the app's logs."""

    def __init__(self, conn: Connection, app_id: str) -> None:
        import asyncio

        self.conn = conn
        self.app_id = app_id
        self.last_log_at = 0.0
        self.shown_log_id = 0  # the last log line shown
        self.tasks = [asyncio.create_task(self._heartbeat())]
        if output_enabled():
            self.tasks.append(asyncio.create_task(self._follow_logs()))

    async def _heartbeat(self) -> None:
        import asyncio

        from ember.proto import api_pb2

        while True:
            await asyncio.sleep(HEARTBEAT_S)
            with contextlib.suppress(errors.Error):
                await self.conn.call(
                    self.conn.ember.AppHeartbeat, api_pb2.AppHeartbeatRequest(app_id=self.app_id)
                )

    async def _follow_logs(self) -> None:
        import asyncio

        import grpc

        while True:
            try:
                await self._show_logs(follow=True)
                return  # the stream ends only when the app has stopped: no more lines will come
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.5)  # the control plane restarts: follow again

    async def _show_logs(self, follow: bool) -> None:
        import asyncio

        from ember.proto import api_pb2

        stream = self.conn.ember.AppLogs(
            api_pb2.AppLogsRequest(app_id=self.app_id, follow=follow, after_id=self.shown_log_id)
        )
        async for entry in stream:
            self.last_log_at = asyncio.get_running_loop().time()
            show_log(entry.fd, entry.data)
            self.shown_log_id = entry.log_id

    async def stop(self, stop_app: bool) -> None:
        import asyncio

        import grpc

        from ember.proto import api_pb2

        loop = asyncio.get_running_loop()
        if len(self.tasks) > 1:
            # Lines printed by the last inputs may still be on their way.
            give_up = loop.time() + LOG_DRAIN_MAX_S
            while loop.time() < give_up and loop.time() - self.last_log_at < LOG_DRAIN_QUIET_S:
                await asyncio.sleep(0.05)
        for task in self.tasks:
            task.cancel()
        if len(self.tasks) > 1:
            # Workers store an input's lines before its result, so whatever the follower has not
            # shown yet is stored by now.
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                await asyncio.wait_for(self._show_logs(follow=False), LOG_DRAIN_MAX_S)
        if stop_app:
            await self.conn.call(
                self.conn.ember.AppStop, api_pb2.AppStopRequest(app_id=self.app_id)
            )


class App:
    """A group of functions. Give it a name to deploy it; `ember run` also names it by its file."""

    def __init__(self, name: str | None = None, *, image: Image | None = None) -> None:
        self.name = name
        self.image = image  # the image of functions that name none (default: debian_slim)
        self._functions: dict[str, Function] = {}
        self._entrypoints: dict[str, LocalEntrypoint] = {}
        self._running: _RunningApp | None = None
        self.app_id: str | None = None

    def __repr__(self) -> str:
        return f"<ember.App {self.name or '(unnamed)'}>"

    @property
    def registered_functions(self) -> dict[str, Function]:
        return dict(self._functions)

    @property
    def registered_entrypoints(self) -> dict[str, LocalEntrypoint]:
        return dict(self._entrypoints)

    # ---- decorators

    def function(
        self,
        _missing_parentheses: Any = None,
        *,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        ephemeral_disk: int | None = None,
        timeout: float = 300,
        retries: int | Retries | None = None,
        min_containers: int = 0,
        max_containers: int | None = None,
        scaledown_window: float = 60,
        name: str | None = None,
        image: Image | None = None,
    ) -> Callable[[Callable[..., Any]], Function]:
        """Register a function to run in containers.

        Args:
            cpu: cores reserved (a pair is (request, limit)); default 0.125, no limit.
            memory: MiB reserved and enforced (a pair is (request, limit)); default 128, no limit.
            ephemeral_disk: MiB of disk the container may write (its root file system's free
                space); default 10240. Writing past it fails with ENOSPC.
            timeout: seconds one input may run before it fails and its container is replaced.
            retries: re-runs of a failed input (an int, or `ember.Retries` for backoff).
            min_containers, max_containers: bounds on the function's containers.
            scaledown_window: seconds a container may sit idle before it stops.
            image: the image its containers run (default: the app's).
        """
        if _missing_parentheses is not None:
            raise errors.InvalidError("write @app.function() with parentheses")

        def decorate(raw_f: Callable[..., Any]) -> Function:
            if isinstance(raw_f, Function):
                raise errors.InvalidError(f"{raw_f!r} is already registered with an app")
            spec = FunctionSpec(
                raw_f,
                module=module_name(raw_f),
                name=name,
                cpu=cpu,
                memory=memory,
                ephemeral_disk=ephemeral_disk,
                timeout=timeout,
                retries=retries,
                min_containers=min_containers,
                max_containers=max_containers,
                scaledown_window=scaledown_window,
                image=image,
            )
            if spec.name in self._functions:
                raise errors.InvalidError(
                    f"app {self!r} already has a function named {spec.name!r}"
                )
            function = Function(raw_f, spec)
            self._functions[spec.name] = function
            return function

        return decorate

    def local_entrypoint(
        self, _missing_parentheses: Any = None, *, name: str | None = None
    ) -> Callable[[Callable[..., Any]], LocalEntrypoint]:
        """Register the function `ember run` calls here, on your machine; its parameters become
        command-line options. It may be an `async def`, awaiting `.remote.aio(...)` and iterating
        `.map.aio(...)` and `.remote_gen.aio(...)` with `async for`."""
        if _missing_parentheses is not None:
            raise errors.InvalidError("write @app.local_entrypoint() with parentheses")

        def decorate(raw_f: Callable[..., Any]) -> LocalEntrypoint:
            entrypoint = LocalEntrypoint(raw_f, self, name)
            self._entrypoints[entrypoint.name] = entrypoint
            return entrypoint

        return decorate

    # ---- running and deploying

    def _entry_module(self) -> str:
        if not self._functions:
            raise errors.InvalidError(f"{self!r} has no functions to run")
        first = next(iter(self._functions.values()))
        assert first.spec is not None
        return first.spec.module

    async def _definitions(self, conn: Connection) -> list[Any]:
        """The functions' definitions, each with its image built (each image once)."""
        from ember.sdk.image import Image

        shown = console()
        show = (lambda text: shown.file.write(text)) if shown is not None else None
        built: dict[Image, str] = {}
        definitions = []
        for function in self._functions.values():
            assert function.spec is not None
            image = function.spec.image or self.image or Image.debian_slim()
            if image not in built:
                built[image] = await image._build(conn, show)
            definitions.append(function.spec.to_proto(built[image], image.definition_key()))
        return definitions

    def _prepare_cluster(self) -> None:
        """Build the base image here, with progress, before a local cluster needs it."""
        from ember import config

        if config.server_url() is None:
            from ember.builder import ensure_base_image

            ensure_base_image(console=console())

    async def _upload_source(self, conn: Connection) -> str:
        from ember.client.blobs import upload
        from ember.sdk.source import module_file, source_archive

        module = self._entry_module()
        return await upload(conn, source_archive(module_file(module), module))

    async def _start(self, detach: bool) -> None:
        import uuid

        from ember.proto import api_pb2
        from ember.sdk._calls import connection

        conn = await connection()
        source_blob_id = await self._upload_source(conn)
        # Images first: a build may take minutes, and an app exists only once it can run.
        definitions = await self._definitions(conn)
        created = await conn.call(
            conn.ember.AppCreate,
            api_pb2.AppCreateRequest(
                name=self.name or self._entry_module(),
                detach=detach,
                client_key=uuid.uuid4().hex,
            ),
        )
        published = await conn.call(
            conn.ember.AppPublish,
            api_pb2.AppPublishRequest(
                app_id=created.app_id,
                source_blob_id=source_blob_id,
                functions=definitions,
            ),
        )
        self.app_id = created.app_id
        for name, function in self._functions.items():
            function._hydrate(published.function_ids[name])
        self._running = _RunningApp(conn, created.app_id)
        shown = console()
        if shown is not None:
            names = ", ".join(self._functions)
            shown.print(f"[green]✓[/] app {self.app_id} running: {names}", highlight=False)

    async def _stop(self, detach: bool) -> None:
        running, self._running = self._running, None
        if running is not None:
            await running.stop(stop_app=not detach)
            shown = console()
            if shown is not None and not detach:
                shown.print(f"[green]✓[/] app {running.app_id} stopped", highlight=False)
        for function in self._functions.values():
            function._hydrate(None)

    @contextlib.contextmanager
    def run(self, *, detach: bool = False) -> Iterator[App]:
        """Run the app while the block runs; with `detach`, it keeps running afterwards.

        with app.run():
            print(square.remote(4))
        """
        if self._running is not None:
            raise errors.InvalidError(f"{self!r} is already running")
        self._prepare_cluster()
        run_blocking(self._start(detach))
        try:
            yield self
        finally:
            run_blocking(self._stop(detach))

    def deploy(self, *, name: str | None = None) -> DeployResult:
        """Deploy the app under its name: a new version that `Function.from_name` finds."""
        return run_blocking(self._deploy(name))

    async def _deploy(self, name: str | None) -> DeployResult:
        import asyncio

        from ember.proto import api_pb2
        from ember.sdk._calls import connection

        name = name or self.name
        if not name:
            raise errors.InvalidError('a deployed app needs a name: ember.App("my-app")')
        await asyncio.to_thread(self._prepare_cluster)
        conn = await connection()
        response = await conn.call(
            conn.ember.AppDeploy,
            api_pb2.AppDeployRequest(
                name=name,
                source_blob_id=await self._upload_source(conn),
                functions=await self._definitions(conn),
            ),
        )
        return DeployResult(response.app_id, response.version)
