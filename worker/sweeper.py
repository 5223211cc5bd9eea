"""The sweeper: re-ring the doorbell for every event Postgres says is due.

It heals a lost enqueue (Redis down at ingest, Redis flushed, a deferred retry lost): pending rows
older than the grace period and failed events whose retry time has come are enqueued again. Job
ids make this idempotent, so any number of workers may sweep.
"""

from __future__ import annotations

import datetime as dt
import time

from aipt import db, queue
from aipt.logs import log
from aipt.settings import Settings


async def sweep(ctx: dict, slot=None) -> int:
    settings: Settings = ctx["settings"]
    started = time.perf_counter()
    try:
        async with ctx["pool"].acquire() as conn:
            rows = await conn.fetch(
                db.queries["due_events"], settings.sweeper.pending_after_seconds, settings.sweeper.batch_size
            )
    except db.UNAVAILABLE as exc:
        # Postgres restarting or down: the next run (a minute away) sweeps what this one would have.
        log.warning("sweeper skipped: database unavailable", error=str(exc) or type(exc).__name__)
        return 0
    enqueued = 0
    for row in rows:
        enqueued += await queue.enqueue_event(ctx["redis"], row["event_id"], row["attempt"])
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    if rows:
        log.info("sweeper enqueued due events", due=len(rows), enqueued=enqueued, duration_ms=duration_ms)
    # For `aipt status`: a run every minute is too frequent for a table; Redis keeps the last one.
    await queue.note_cron_run(
        ctx["redis"],
        "sweeper",
        at=dt.datetime.now(dt.UTC).isoformat(),
        due=len(rows),
        enqueued=enqueued,
        duration_ms=duration_ms,
    )
    return enqueued


def schedule(settings: Settings) -> queue.Cron:
    """The sweep, every `sweeper.every_seconds`, also right at start-up."""
    return queue.Cron(
        "sweeper",
        sweep,
        timeout=settings.queue.job_timeout_seconds,
        every_seconds=settings.sweeper.every_seconds,
        at_startup=True,
    )
