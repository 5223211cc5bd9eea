"""The retention cleanups as daily crons: one per job that is not off, at its [cleanup] <job>_at time.

The run itself is aipt.retention's, as `aipt cleanup` runs it by hand; a scheduled run is recorded
once per slot (the time the cron was scheduled for), so workers racing for the same cron run it once.
"""

from __future__ import annotations

import datetime as dt

from aipt import queue, retention
from aipt.settings import CLEANUP_JOBS, Settings


def _job(job: str):
    async def cleanup(ctx: dict, slot: dt.datetime | None) -> dict:
        settings: Settings = ctx["settings"]
        return (await retention.run(settings, job, slot=slot, max_seconds=retention.time_limit(settings))).as_dict()

    cleanup.__qualname__ = cleanup.__name__ = f"cleanup_{job}"
    return cleanup


def schedules(settings: Settings) -> list[queue.Cron]:
    """A cron per job that is not off, daily at its time (the worker's local time)."""
    return [
        queue.Cron(
            f"cleanup:{job}", _job(job), timeout=settings.queue.job_timeout_seconds, daily_at=settings.cleanup.at(job)
        )
        for job in CLEANUP_JOBS
        if settings.cleanup.at(job) is not None
    ]
