"""Image build steps the control plane orders this host to run, reported back as they go."""

from __future__ import annotations

import asyncio
import logging

from ember import errors
from ember.builder.build import BuildHost, build_step
from ember.client import Connection
from ember.proto import api_pb2

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.2


class Builds:
    def __init__(self, host: BuildHost, conn: Connection) -> None:
        self._host = host
        self._conn = conn
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, order: api_pb2.BuildOrder) -> None:
        task = asyncio.create_task(self._build(order), name=f"build-{order.build_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _build(self, order: api_pb2.BuildOrder) -> None:
        pending: list[str] = []
        reporter = asyncio.create_task(self._report_output(order.build_id, pending))
        done = api_pb2.BuildReportRequest(build_id=order.build_id, done=True)
        try:
            built = await build_step(
                self._host, order.build_id, order.parent_image_id, order.step, pending.append
            )
            done.image_id, done.size_bytes, done.files = (
                built.image_id,
                built.size_bytes,
                built.files,
            )
        except errors.Error as error:
            done.error = str(error)
        except Exception as error:
            log.exception("build %s failed", order.build_id)
            done.error = f"the image build failed on its host: {error!r}"
        finally:
            reporter.cancel()
        done.output = "".join(pending)
        try:
            await self._conn.call(self._conn.workers.BuildReport, done)
        except errors.Error as error:
            log.warning("build %s: result not reported: %s", order.build_id, error)

    async def _report_output(self, build_id: str, pending: list[str]) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            if not pending:
                continue
            count = len(pending)
            report = api_pb2.BuildReportRequest(build_id=build_id, output="".join(pending[:count]))
            try:
                await self._conn.call(self._conn.workers.BuildReport, report)
            except errors.Error as error:
                log.warning("build %s: output not reported: %s", build_id, error)
            del pending[:count]  # only once sent: if cancelled first, the final report has it
