"""Expiry: finished calls' inputs and outputs, blobs no row names and old log lines are deleted,
and the database gives the space back, so that repeated large maps do not grow it for good.

What goes, and when (the policy is `is_finished`, `expires_at` and `blobs_to_delete`, pure
functions of plain data and `now`):

- A call is finished when none of its inputs may still run (none leased; none queued, except
  queued inputs stranded in an app stopped a retention ago) and no more can come: its inputs
  are complete, it was cancelled, or its app stopped. A map whose client never completed its
  inputs counts as finished after a retention with nothing left to run; an input put later
  makes it run again. Each pass marks the calls it finds finished (`finished_at` is therefore
  up to one pass late).
- A finished call's rows (the call, its inputs, its outputs) go `retention_s` after it finished
  (`EMBER_OUTPUT_RETENTION_S`, default 7 days), so `FunctionCall.from_id(id).get()` answers for
  that long after a `.spawn()`ed call ends.
- Sooner, `delivered_grace_s` (10 minutes) after delivery, for the calls only their own caller
  reads, `.remote()` and `.map()`, whose ids the SDK never shows: once their app has stopped
  (an ephemeral app stops when `app.run()` or `ember run` ends, or 30 s after its client
  vanished; a deployed one when replaced or stopped), and for a map once its reader cancelled it
  (`FunctionCallCancel` ends a map whose caller stopped early or failed). The grace covers a
  request repeated across a reconnect (up to 120 s) and a reader still taking the cancelled
  outputs of an app stopped under it. The server cannot see from the store that a reader of a
  live app has read a map's last output: the SDK stops asking after it, and `.remote()` is
  usually answered from memory; those calls keep their full retention.
- A blob is deleted when no row names it (a queued or leased input's arguments, an output's
  payload, the source of an app live or stopped within the retention) and its last upload is
  older than `blob_grace_s`: the retention, but at least an hour and at most a day. The grace is
  what covers the time between `BlobPut` and the request that names the blob: a `.remote()`'s
  call follows at once, but an app's source is uploaded before its images build, and a map's
  arguments wait in a batch while the map holds back for its reader. It is capped at a day so
  a 300 MB argument of a call delivered early does not stay for the whole retention.
- Log lines older than the retention go too.

Nothing live is touched: a call with inputs that may still run is not finished, and rows are
deleted only once a call is past its expiry; the dispatcher's restore reads only queued and
leased inputs; a blob re-uploaded after it was listed is young again and kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from ember.control.blobs import BlobStore, StoredBlob
from ember.control.clock import Clock
from ember.control.store import CallFacts, Store
from ember.proto import api_pb2

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 60.0
DELIVERED_GRACE_S = 600.0
BLOB_GRACE_MIN_S = 3600.0
BLOB_GRACE_MAX_S = 24 * 3600.0
# Apps are looked at again this far back: a stop stamped just before a pass may commit after it.
_STOP_OVERLAP_S = 60.0

# The calls only their own caller reads (the SDK never shows their ids).
DELIVERABLE = (api_pb2.CALL_KIND_REMOTE, api_pb2.CALL_KIND_MAP)

# Work is done in pieces, with the event loop let go in between: statements run on it (SQLite).
_CALLS_PER_QUERY = 1000
# Expired calls' rows: a piece of 100 rows of up to 50 calls holds the loop 1.2 ms at p50 and
# 15 ms at most (250 rows of 100 calls: 6 ms and 31 ms), and a whole pass is no slower.
_ROWS_PER_DELETE = 100
_CALLS_PER_DELETE = 50
_LOG_LINES_PER_DELETE = 5000
# Free pages are given back once there are this many (4 MiB at SQLite's 4 KiB pages), so much
# at a time; below that, the next inserts reuse them.
RECLAIM_MIN_PAGES = 1024
_RECLAIM_PAGES_PER_STEP = 2048


@dataclass(frozen=True)
class RetentionPolicy:
    retention_s: float
    delivered_grace_s: float = DELIVERED_GRACE_S

    @property
    def blob_grace_s(self) -> float:
        return min(max(self.retention_s, BLOB_GRACE_MIN_S), BLOB_GRACE_MAX_S)


def is_finished(call: CallFacts, now: float, policy: RetentionPolicy) -> bool:
    """Whether nothing of the call may still run and no more of it can come."""
    if call.has_work:
        return False
    if call.inputs_complete or call.cancelled or call.app_stopped_at is not None:
        return True
    # The client may still put inputs (a map feeding slowly); one that has put none for a whole
    # retention is taken to be gone.
    return call.created_at <= now - policy.retention_s


def expires_at(call: CallFacts, finished_at: float, policy: RetentionPolicy) -> float:
    """When a call that finished at `finished_at` may have its rows deleted."""
    deadline = finished_at + policy.retention_s
    if call.kind in DELIVERABLE:
        grace = policy.delivered_grace_s
        if call.app_stopped_at is not None:
            deadline = min(deadline, max(finished_at, call.app_stopped_at) + grace)
        if call.kind == api_pb2.CALL_KIND_MAP and call.cancelled:
            deadline = min(deadline, finished_at + grace)
    return deadline


def blobs_to_delete(
    blobs: Iterable[StoredBlob], referenced: set[str], uploaded_before: float
) -> list[StoredBlob]:
    """The blobs no row names whose last upload was before `uploaded_before`."""
    return [
        blob
        for blob in blobs
        if blob.uploaded_at < uploaded_before and blob.blob_id not in referenced
    ]


@dataclass
class PassReport:
    finished: int = 0  # calls marked finished
    brought_forward: int = 0  # finished calls whose app stopped: expiry moved sooner
    calls_deleted: int = 0
    rows_deleted: int = 0  # calls, inputs and outputs
    log_lines_deleted: int = 0
    blobs_deleted: int = 0
    blob_bytes_freed: int = 0
    pages_reclaimed: int = 0


class Expiry:
    def __init__(
        self, store: Store, blobs: BlobStore, clock: Clock, policy: RetentionPolicy
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._clock = clock
        self.policy = policy
        self._apps_since: float | None = None  # stops before this were looked at already

    async def run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(PASS_INTERVAL_S)

    async def run_once(self) -> PassReport:
        now = self._clock.now()
        report = PassReport()
        report.finished = await self._mark_finished(now)
        report.brought_forward = await self._bring_forward(now)
        report.calls_deleted, report.rows_deleted = await self._delete_expired(now)
        report.log_lines_deleted = await self._delete_old_logs(now)
        report.blobs_deleted, report.blob_bytes_freed = await self._delete_blobs(now)
        report.pages_reclaimed = await self._reclaim_space()
        if report.calls_deleted or report.log_lines_deleted or report.blobs_deleted:
            log.info(
                "expired %d calls (%d rows), %d log lines, %d blobs (%d MB); %d pages given back",
                report.calls_deleted,
                report.rows_deleted,
                report.log_lines_deleted,
                report.blobs_deleted,
                report.blob_bytes_freed >> 20,
                report.pages_reclaimed,
            )
        return report

    async def _mark_finished(self, now: float) -> int:
        stranded_before = now - self.policy.retention_s
        marked = 0
        after = ""
        while True:
            calls = await self._store.expiry.unfinished(stranded_before, _CALLS_PER_QUERY, after)
            finished = [
                (call.call_id, now, expires_at(call, now, self.policy))
                for call in calls
                if is_finished(call, now, self.policy)
            ]
            marked += await self._store.expiry.mark_finished(finished, stranded_before)
            if len(calls) < _CALLS_PER_QUERY:
                return marked
            after = calls[-1].call_id
            await asyncio.sleep(0)

    async def _bring_forward(self, now: float) -> int:
        """Finished calls of apps stopped since the last pass may go sooner (see the module)."""
        since = self._apps_since
        if since is None:  # first pass: stops older than a retention change nothing left
            since = now - self.policy.retention_s
        self._apps_since = now - _STOP_OVERLAP_S
        changed = 0
        for app_id, _ in await self._store.expiry.stopped_apps(since):
            for function_id in await self._store.expiry.functions_of_app(app_id):
                changed += await self._bring_forward_function(function_id)
        return changed

    async def _bring_forward_function(self, function_id: str) -> int:
        changed = 0
        after = ""
        while True:
            calls = await self._store.expiry.finished_calls_of_function(
                function_id, DELIVERABLE, after, _CALLS_PER_QUERY
            )
            sooner = []
            for call in calls:
                assert call.finished_at is not None and call.expires_at is not None
                deadline = expires_at(call, call.finished_at, self.policy)
                if deadline < call.expires_at:
                    sooner.append((call.call_id, deadline))
            changed += await self._store.expiry.bring_forward(sooner)
            if len(calls) < _CALLS_PER_QUERY:
                return changed
            after = calls[-1].call_id
            await asyncio.sleep(0)

    async def _delete_expired(self, now: float) -> tuple[int, int]:
        calls = rows = 0
        while True:
            gone_calls, gone_rows = await self._store.expiry.delete_expired(
                now, _CALLS_PER_DELETE, _ROWS_PER_DELETE
            )
            if not gone_rows:
                return calls, rows
            calls, rows = calls + gone_calls, rows + gone_rows
            await asyncio.sleep(0)

    async def _delete_old_logs(self, now: float) -> int:
        cutoff = now - self.policy.retention_s
        total = 0
        while deleted := await self._store.logs.delete_before(cutoff, _LOG_LINES_PER_DELETE):
            total += deleted
            if deleted < _LOG_LINES_PER_DELETE:
                break
            await asyncio.sleep(0)
        return total

    async def _delete_blobs(self, now: float) -> tuple[int, int]:
        uploaded_before = now - self.policy.blob_grace_s
        freed = await self._blobs.delete_stale_uploads(uploaded_before)
        old = [blob for blob in await self._blobs.list() if blob.uploaded_at < uploaded_before]
        if not old:
            return 0, freed
        referenced = await self._store.expiry.referenced_blobs(
            [blob.blob_id for blob in old], sources_since=now - self.policy.retention_s
        )
        deleted = 0
        for blob in blobs_to_delete(old, referenced, uploaded_before):
            # Checked against the file again as it is removed: a put since the listing keeps it.
            size = self._blobs.delete(blob.blob_id, uploaded_before)
            if size:
                deleted += 1
                freed += size
        return deleted, freed

    async def _reclaim_space(self) -> int:
        if await self._store.free_pages() < RECLAIM_MIN_PAGES:
            return 0
        total = 0
        while reclaimed := await self._store.reclaim_space(_RECLAIM_PAGES_PER_STEP):
            total += reclaimed
            await asyncio.sleep(0)
        return total
