"""One container's life on a worker, from the control plane's start order to its removal.

    source unpacked ─▶ harness socket listening ─▶ runc starts the container
      ─▶ harness connects and imports the function ("ready", or "init_failure")
      ─▶ loop: exchange results for inputs with the control plane; feed each input to the harness
         under the function's timeout, watching for the container's death meanwhile
      ─▶ stop order, idle stop, timeout or death: kill, report the exit, remove everything

The task reports the exit exactly once, naming the input it was running (a failed attempt); the
control plane puts the others the container held back in the queue untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from ember.client import Connection
from ember.client.blobs import from_payload, to_payload
from ember.client.connection import stream_ended
from ember.container import ExitStatus
from ember.imagefs.client import PreparedImage
from ember.proto import api_pb2
from ember.proto import harness_frames as frames
from ember.worker.container_start import (
    ContainerShape,
    ContainerStarter,
    StartedContainer,
    link_source,
)
from ember.worker.images import ImageRoots
from ember.worker.logs import ContainerLogs, LogShipper
from ember.worker.sources import SourceCache
from ember.worker.standby import StandbyPool

log = logging.getLogger(__name__)

T = TypeVar("T")

STARTUP_TIMEOUT_S = 120.0
EXCHANGE_WAIT_S = 30.0
PREFETCH = 16  # inputs a container of a fast function may hold at once (the control plane
# shares a backlog fairly); a slow function's container takes one at a time
FAST_INPUT_S = 0.01
REPORT_AFTER_S = 0.05  # a result older than this is reported before the next input runs


@dataclass
class Exit:
    reason: int
    message: str


class ContainerTask:
    def __init__(
        self,
        spec: api_pb2.ContainerSpec,
        *,
        conn: Connection,
        starter: ContainerStarter,
        standbys: StandbyPool,
        images: ImageRoots,
        sources: SourceCache,
        logs: LogShipper,
    ) -> None:
        self.spec = spec
        self._conn = conn
        self._starter = starter
        self._standbys = standbys
        self._images = images
        self._sources = sources
        self._logs = logs
        self._running: str | None = None  # the input the harness is running
        self._results: list[api_pb2.InputResult] = []  # finished, not yet reported
        self._container: StartedContainer | None = None
        self._ready = False  # the harness has imported the function
        self._fast = True  # its last input took under FAST_INPUT_S
        self._stopped_as = Exit(api_pb2.RESULT_STATUS_CANCELLED, "the container was stopped")
        self.task: asyncio.Task[None] | None = None
        self._finishing: asyncio.Future[None] | None = None
        self._stream: Any = None  # the exchange stream, once opened
        self._image: PreparedImage | None = None  # the image as prepared for this start
        self._served_one = False  # a first input has finished

    @property
    def container_id(self) -> str:
        return self.spec.container_id

    # ---- the whole life

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._life(), name=self.container_id)
        return self.task

    def stop(self, *, failed: str = "") -> None:
        """Stop the container. Its running input is cancelled when the control plane ordered the
        stop; when the host `failed` it (the worker is stopping, say), the input was lost with
        its host for that reason and runs again, not counted against the function's retries."""
        if failed:
            self._stopped_as = Exit(api_pb2.RESULT_STATUS_HOST_LOST, failed)
        if self.task is not None:
            self.task.cancel()

    @property
    def image_daemon(self) -> str | None:
        """The life of the imagefs daemon whose mounts the container's root stands on."""
        return self._image.daemon if self._image is not None else None

    async def _life(self) -> None:
        outcome = Exit(api_pb2.RESULT_STATUS_CONTAINER_DIED, "the container stopped")
        try:
            outcome = await self._run()
        except asyncio.CancelledError:
            outcome = self._stopped_as
            raise
        except Exception as error:
            log.exception("container %s failed", self.container_id)
            # The host's own failure, not the function's; but before the harness is ready
            # nothing would go better on a retry.
            reason = (
                api_pb2.RESULT_STATUS_HOST_LOST
                if self._ready
                else api_pb2.RESULT_STATUS_INIT_FAILURE
            )
            outcome = Exit(reason, f"the container failed on its host: {error}")
        finally:
            # Shielded: a second cancellation (the worker stopping) must not cut the clean-up
            # short; `stopped()` waits for it.
            self._finishing = asyncio.ensure_future(self._finish(outcome))
            await asyncio.shield(self._finishing)

    async def stopped(self) -> None:
        """Wait until the container is removed and its exit reported."""
        if self.task is not None:
            await asyncio.wait([self.task])
        if self._finishing is not None:
            await asyncio.wait([self._finishing])

    async def _finish(self, outcome: Exit) -> None:
        container = self._container
        if container is not None:
            await self._starter.stop(container)
            with contextlib.suppress(Exception):
                await self._logs.flush(self.container_id, final=True)
            await self._starter.remove(container)
        if self._results:
            try:
                await self._exchange(want=0, wait_s=0)
            except Exception as error:  # the exit must still be reported
                log.warning("container %s: results not reported: %s", self.container_id, error)
        if self._stream is not None:
            self._stream.cancel()
        await self._conn.call(
            self._conn.workers.ContainerExited,
            api_pb2.ContainerExitedRequest(
                container_id=self.container_id,
                reason=outcome.reason,
                message=outcome.message,
                inflight_input_ids=[self._running] if self._running else [],
            ),
        )

    async def _run(self) -> Exit:
        definition = self.spec.function
        source = await self._sources.ensure(self.spec.source_blob_id)
        shape = ContainerShape.of(definition)
        self._image = await self._starter.prepare(shape)
        container = await self._standbys.take(shape, self._image)
        if container is None:
            container = await self._starter.start(self.container_id, shape, self._image)
        self._container = container
        await asyncio.to_thread(link_source, source, container.app_dir)
        self._logs.watch(
            self.container_id,
            ContainerLogs(
                self.spec.app_id,
                definition.name,
                self.container_id,
                self._starter.output_streams(container),
            ),
        )
        try:
            hello = await self._until_exit(self._hello(container), STARTUP_TIMEOUT_S)
        except TimeoutError:
            return Exit(
                api_pb2.RESULT_STATUS_INIT_FAILURE,
                f"the container did not become ready within {STARTUP_TIMEOUT_S:g} s",
            )
        if isinstance(hello, Exit):
            return hello
        if isinstance(hello, frames.InitFailure):
            text = f"{hello.traceback.rstrip()}\n{hello.exception_text}".strip()
            return Exit(api_pb2.RESULT_STATUS_INIT_FAILURE, text)
        self._ready = True
        return await self._serve(container)

    async def _hello(self, container: StartedContainer) -> frames.Message | Exit:
        """Give the connected harness its function; its answer (Ready or InitFailure)."""
        definition = self.spec.function
        await container.link.connected()
        env = {
            "EMBER_MODULE": definition.module,
            "EMBER_QUALNAME": definition.qualname,
            "EMBER_CONTAINER_ID": self.container_id,
            "EMBER_IMAGE_KEY": definition.image_key,
        }
        await container.link.send(frames.Load(env))
        try:
            message = await container.link.receive()
        except frames.FrameError as error:
            return _violation(api_pb2.RESULT_STATUS_INIT_FAILURE, str(error))
        if message is None:
            return frames.InitFailure("the harness exited before it was ready", "")
        if not isinstance(message, frames.Ready | frames.InitFailure):
            return _violation(
                api_pb2.RESULT_STATUS_INIT_FAILURE,
                f"a {type(message).__name__} message before it was ready",
            )
        return message

    async def _until_exit(self, work: Awaitable[T], timeout: float | None) -> T | Exit:
        """Run `work` unless the container exits first (an `Exit`); TimeoutError after
        `timeout`."""
        assert self._container is not None
        outcome = await self._container.until_exit(work, timeout)
        if isinstance(outcome, ExitStatus):
            return self._describe_exit(outcome)
        return outcome

    def _describe_exit(self, status: ExitStatus) -> Exit:
        limit = self.spec.function.resources.memory_limit_mb
        if status.oom_killed:
            return Exit(
                api_pb2.RESULT_STATUS_OUT_OF_MEMORY,
                f"the container ran out of memory (its limit is {limit} MiB); "
                "ask for more with @app.function(memory=...)",
            )
        if status.signal is not None:
            how = f"was killed by signal {status.signal}"
        elif status.exit_code is not None:
            how = f"exited with code {status.exit_code}"
        else:
            how = "exited"
        return Exit(
            api_pb2.RESULT_STATUS_CONTAINER_DIED, f"the container {how} while running the input"
        )

    # ---- serving inputs

    async def _serve(self, container: StartedContainer) -> Exit:
        loop = asyncio.get_running_loop()
        while True:
            want = PREFETCH if self._fast else 1
            response = await self._exchange(want=want, wait_s=EXCHANGE_WAIT_S)
            if response.stop:
                return Exit(api_pb2.RESULT_STATUS_CANCELLED, "the container was stopped")
            for item in response.inputs:
                self._running = item.input_id
                started = loop.time()
                outcome = await self._run_input(container, item)
                if outcome is not None:
                    return outcome
                self._running = None
                took = loop.time() - started
                self._fast = took < FAST_INPUT_S
                # A slow input's caller need not wait for the rest of the batch.
                report_now = took >= REPORT_AFTER_S and item is not response.inputs[-1]
                if report_now and (await self._exchange(want=0, wait_s=0)).stop:
                    return Exit(api_pb2.RESULT_STATUS_CANCELLED, "the container was stopped")

    async def _exchange(self, want: int, wait_s: float) -> api_pb2.ContainerExchangeResponse:
        """Report finished results and ask for up to `want` more inputs (over the container's
        exchange stream, opened again if the control plane restarted: requests are safe to
        repeat)."""
        results, self._results = self._results, []
        request = api_pb2.ContainerExchangeRequest(
            container_id=self.container_id, results=results, want_inputs=want, wait_s=wait_s
        )
        try:
            return await self._conn.reconnecting(lambda: self._exchange_once(request))
        except BaseException:
            self._results[:0] = results  # not delivered: the final report tries again
            raise

    async def _exchange_once(
        self, request: api_pb2.ContainerExchangeRequest
    ) -> api_pb2.ContainerExchangeResponse:
        if self._stream is None or self._stream.done():
            self._stream = self._conn.workers.ContainerExchange()
        stream = self._stream
        try:
            await stream.write(request)
            response = await stream.read()
        except asyncio.InvalidStateError:
            response = grpc.aio.EOF  # it ended before the write: its status says why
        if response is grpc.aio.EOF:
            self._stream = None
            raise await stream_ended(stream)  # `reconnecting` opens a new one and asks again
        return response  # type: ignore[no-any-return]

    async def _run_input(self, container: StartedContainer, item: api_pb2.Input) -> Exit | None:
        """Feed one input to the harness and collect its result; an `Exit` if the container
        must go (it died, timed out, or sent something that is not this input's result)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.function.timeout_s
        link = container.link
        await link.send(frames.Input(item.input_id, await from_payload(self._conn, item.args)))
        gen_index = 0  # the index the next result must carry
        while True:
            try:
                # No race with the container's exit (a task and a wait per result): the harness
                # is the container's first process, so its socket closes when the container
                # exits, and `receive` answers None.
                async with asyncio.timeout_at(deadline):
                    message = await link.receive()
            except TimeoutError:
                return Exit(
                    api_pb2.RESULT_STATUS_TIMEOUT,
                    f"the input ran past the function's timeout of {self.spec.function.timeout_s:g} s",
                )
            except frames.FrameError as error:
                return _violation(api_pb2.RESULT_STATUS_CONTAINER_DIED, str(error))
            if message is None:  # the harness closed the socket: the container is on its way out
                return self._describe_exit(await container.exited)
            wrong = _wrong_result(
                message, item.input_id, gen_index, self.spec.function.is_generator
            )
            if wrong:
                return _violation(api_pb2.RESULT_STATUS_CONTAINER_DIED, wrong)
            assert isinstance(message, frames.Result)
            result = api_pb2.InputResult(
                input_id=message.input_id,
                gen_index=message.gen_index,
                result=api_pb2.Result(
                    status=message.status,
                    exception_text=message.exception_text,
                    traceback=message.traceback,
                ),
            )
            if message.data is not None:
                result.result.data.CopyFrom(await to_payload(self._conn, message.data))
            await self._logs.flush(self.container_id)
            if self.spec.function.is_generator and message.status == frames.SUCCESS:
                # Yielded items stream to the caller now, not with the next exchange.
                self._results.append(result)
                await self._exchange(want=0, wait_s=0)
                gen_index += 1
                continue
            self._results.append(result)
            if not self._served_one:
                self._served_one = True
                self._first_input_done()
            return None

    def _first_input_done(self) -> None:
        """The cold start is over: save what it read if it was the image's first start, and have
        a container of this shape start ahead for the next cold start."""
        assert self._image is not None
        if not self._image.recorded:
            self._images.first_start_done(self.spec.function.image_id, self._image)
        self._standbys.replenish(ContainerShape.of(self.spec.function))


def _wrong_result(message: frames.Message, input_id: str, gen_index: int, generator: bool) -> str:
    """What is wrong with `message` as the next result of input `input_id` (empty if nothing):
    a container may report only on the input it is running, in order."""
    if not isinstance(message, frames.Result):
        return f"a {type(message).__name__} message while it ran an input"
    if message.input_id != input_id:
        return f"a result for input {message.input_id[:80]!r}, which it was not running"
    allowed = {frames.SUCCESS, frames.FAILURE} | ({frames.GENERATOR_DONE} if generator else set())
    if message.status not in allowed:
        return f"a result with status {message.status}, which is not one a harness sends"
    if message.gen_index != gen_index:
        return f"a result numbered {message.gen_index} where {gen_index} was due"
    if message.status == frames.SUCCESS and message.data is None:
        return "a successful result without a value"
    if message.status == frames.GENERATOR_DONE and message.data is not None:
        return "a generator's end that carries a value"
    return ""


def _violation(reason: int, what: str) -> Exit:
    """The container sent its worker something the protocol does not allow: it is stopped, and
    the input it held fails an attempt."""
    return Exit(reason, f"the container broke the harness protocol ({what}); it was stopped")
