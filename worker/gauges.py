"""The queue gauges: dead events, retries waiting, oldest pending age, queue depth.

Every worker refreshes them on its own every metrics.refresh_seconds (a plain task, not an arq cron:
a cron job runs on whichever worker picks it up, which would leave the others' gauges stale). One
index-backed query and one ZCARD each time; the web process never pays for them.
"""

from __future__ import annotations

import asyncio

from aipt import db, metrics, queue
from aipt.logs import log
from aipt.settings import Settings


async def refresh(ctx: dict) -> dict:
    """Read the gauges now; returns them. Raises when Postgres or Redis cannot answer."""
    async with ctx["pool"].acquire() as conn:
        row = await conn.fetchrow(db.queries["queue_gauges"])
    depth = await queue.queue_depth(ctx["redis"])
    values = {**dict(row), "queue_depth": depth}
    metrics.DEAD_EVENTS.set(values["dead"])
    metrics.RETRYING_EVENTS.set(values["retrying"])
    metrics.OLDEST_PENDING.set(values["oldest_pending_seconds"] or 0)
    metrics.QUEUE_DEPTH.set(depth)
    return values


async def keep_fresh(ctx: dict) -> None:
    """Refresh until cancelled; a failure is logged once per outage, and the gauges keep their last value."""
    settings: Settings = ctx["settings"]
    failing = False
    while True:
        try:
            await refresh(ctx)
            if failing:
                log.info("queue gauges refreshed again")
            failing = False
        except Exception as exc:
            if not failing:
                log.warning("queue gauges not refreshed", error=str(exc) or type(exc).__name__)
            failing = True
        await asyncio.sleep(settings.metrics.refresh_seconds)
