"""Retention runs: the cleanup_* SQL functions (46_retention_v2.sql), batch after batch.

What goes and what never goes is decided in SQL; this module owns the loop over batches (each one
short transaction, with a pause between them so ingest keeps its latency), the time limit, logs and
metrics. A run holds its job through a lease in cleanup_runs that each batch extends: a run that dies
stops extending it, and once it runs out (the queue's own claim on a killed job lasts as long) the next
run closes it as abandoned. A scheduled run (worker/cleanup.py, daily) is recorded once per slot, so any
number of workers racing for the same cron run it once; `aipt cleanup` runs them by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import time
from dataclasses import dataclass, field

import asyncpg

from aipt import db, metrics, queue
from aipt.logs import log
from aipt.settings import Cleanup, Settings

# Each job's SQL function, by its query's full name (aipt/queries.sql).
BATCH_QUERIES = {
    "stripe_events": "cleanup_stripe_events",
    "webhook_failures": "cleanup_webhook_failures",
    "rate_limit": "cleanup_rate_limit",
    "deleted_content": "cleanup_deleted_content",
}


def _arguments(job: str, c: Cleanup) -> tuple:
    """The retention arguments of a job's SQL function, before (dry_run, run_id)."""
    return {
        "stripe_events": (c.stripe_events_days, c.webhook_failures_days, c.batch_size),
        "webhook_failures": (c.webhook_failures_days, c.batch_size),
        "rate_limit": (c.rate_limit_log_days, c.rate_limit_buckets_days, c.batch_size),
        "deleted_content": (),  # one call does it all: f_cleanup_old_deleted_data()
    }[job]


@dataclass
class Outcome:
    job: str
    status: str  # ok | error | refused | dry_run
    counts: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0
    run_id: int | None = None
    note: str | None = None  # why it was refused, the error, or that it stopped at the time limit

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("job", "status", "counts", "batches", "seconds", "run_id", "note")}


async def _batch(conn: asyncpg.Connection, job: str, c: Cleanup, dry_run: bool, run_id: int | None) -> dict[str, int]:
    rows = await conn.fetch(db.queries[BATCH_QUERIES[job]], *_arguments(job, c), dry_run, run_id)
    return {r["table_name"]: r["deleted_count"] for r in rows}


async def preview(conn: asyncpg.Connection, settings: Settings, job: str) -> Outcome:
    """What the job would delete now (every batch), counted, nothing deleted and nothing recorded."""
    started = time.perf_counter()
    counts = await _batch(conn, job, settings.cleanup, True, None)
    return Outcome(job, "dry_run", counts, seconds=round(time.perf_counter() - started, 3))


async def _batches(
    conn: asyncpg.Connection, settings: Settings, job: str, run_id: int, outcome: Outcome, max_seconds: float | None
) -> None:
    c = settings.cleanup
    deadline = time.monotonic() + (max_seconds if max_seconds is not None else float("inf"))
    while True:
        counts = await _batch(conn, job, c, False, run_id)
        outcome.batches += 1
        for table, n in counts.items():
            outcome.counts[table] = outcome.counts.get(table, 0) + n
            metrics.CLEANUP_DELETED.labels(table=table).inc(n)
        if job == "deleted_content" or all(n < c.batch_size for n in counts.values()):
            return
        if time.monotonic() >= deadline:
            outcome.note = f"stopped at the time limit ({max_seconds:g} s); the rest goes next run"
            log.warning("cleanup stopped at its time limit", job=job, run_id=run_id, counts=outcome.counts)
            return
        if c.pause_seconds:
            await asyncio.sleep(c.pause_seconds)


async def _record_abort(settings: Settings, run_id: int, error: str) -> None:
    """Close a run from a fresh connection; if even that fails, the next run marks it abandoned."""
    try:
        conn = await db.connect(settings)
        try:
            await conn.fetch(db.queries["cleanup_finish"], run_id, error)
        finally:
            await conn.close()
    except Exception as exc:
        log.warning("cleanup run not closed; the next run marks it abandoned", run_id=run_id, error=str(exc))


async def run(
    settings: Settings,
    job: str,
    slot: dt.datetime | None = None,
    run_by: str | None = None,
    max_seconds: float | None = None,
) -> Outcome:
    """One run of a cleanup job, batch after batch, recorded; refused when another run holds the job.

    After max_seconds (None: no limit) no new batch starts and the run ends ok, the rest left for the next.
    """
    started = time.perf_counter()
    outcome = Outcome(job, "ok")
    conn = await db.connect(settings)
    try:
        begin = await conn.fetchrow(
            db.queries["cleanup_begin"],
            job,
            slot,
            run_by or f"{socket.gethostname()}:{os.getpid()}",
            lease_seconds(settings),
        )
        if begin["run_id"] is None:
            outcome.status, outcome.note = "refused", begin["refused"]
            log.info("cleanup not run: " + begin["refused"], job=job)
            return outcome
        outcome.run_id = run_id = begin["run_id"]
        try:
            await _batches(conn, settings, job, run_id, outcome, max_seconds)
        except asyncio.CancelledError:
            # The worker is stopping or the job timed out: drop the connection (a batch in flight rolls
            # back), then close the run from another one. The counts recorded so far are exact.
            conn.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_record_abort(settings, run_id, "cancelled (worker stopping or job timeout)"), 5)
            raise
        except (asyncpg.PostgresError, *db.UNAVAILABLE) as exc:
            outcome.status, outcome.note = "error", str(exc) or type(exc).__name__
        if conn.is_closed():
            await _record_abort(settings, run_id, outcome.note or "connection lost")
        else:
            await conn.fetch(db.queries["cleanup_finish"], run_id, outcome.note if outcome.status == "error" else None)
    finally:
        if not conn.is_closed():
            await conn.close()
    outcome.seconds = round(time.perf_counter() - started, 3)
    fields = dict(
        job=job,
        run_id=run_id,
        counts=outcome.counts,
        batches=outcome.batches,
        duration_ms=round(outcome.seconds * 1000, 1),
        slot=slot.isoformat() if slot else None,
    )
    if outcome.status == "error":
        log.error("cleanup failed", error=outcome.note, **fields)
    else:
        metrics.CLEANUP_LAST_SUCCESS.labels(job=job).set(time.time())
        log.info("cleanup finished", **fields)
    return outcome


def lease_seconds(settings: Settings) -> int:
    """How long a run holds its job past its last batch: as long as the queue holds a killed job's claim."""
    return int(queue.claim_seconds(settings))


def time_limit(settings: Settings) -> float:
    """How long a scheduled run may delete: cleanup.max_seconds, within the queue's job timeout.

    The cron keeps the ordinary job timeout on purpose: arq holds every job's in-progress claim for the
    longest timeout of any function + 10 s, so a long cron timeout would also delay the recovery of every
    consume job a killed worker held.
    """
    return max(1.0, min(settings.cleanup.max_seconds, settings.queue.job_timeout_seconds - 5))


def describe(outcome: Outcome) -> str:
    """One line for people: what a run (or a dry run) did."""
    if outcome.status == "refused":
        return f"{outcome.job}: not run, {outcome.note}"
    counts = ", ".join(f"{table} {n}" for table, n in outcome.counts.items()) or "nothing"
    verb = {"dry_run": "would delete", "ok": "deleted", "error": "failed after deleting"}[outcome.status]
    return f"{outcome.job}: {verb} {counts}" + (f" ({outcome.note})" if outcome.note else "")
