"""The worker: the consume job, the crons (sweeper, cleanups), and the resources they share.

`spec` says what a worker process runs; the queue's runner (aipt.queue.runner) runs it, and
aipt.runtime.run_worker starts it (`aipt worker`).
"""

from __future__ import annotations

import asyncio
import contextlib

from aipt import alerts, db, metrics, queue
from aipt.logs import log
from aipt.settings import Settings
from worker import cleanup, gauges, sweeper
from worker.consume import consume_event


def spec(settings: Settings) -> queue.WorkerSpec:
    async def startup(ctx: dict) -> None:
        # min_size=0: a worker starts while Postgres is down and heals when it is back.
        ctx["pool"] = await db.create_pool(settings, min_size=0)
        metrics.register_worker()
        ctx["gauges"] = asyncio.get_running_loop().create_task(gauges.keep_fresh(ctx))
        log.info(
            "worker started",
            queue=settings.queue.name,
            max_jobs=settings.queue.max_jobs,
            loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
        )

    async def shutdown(ctx: dict) -> None:
        if "gauges" in ctx:
            ctx["gauges"].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctx["gauges"]
        await alerts.drain()
        if "pool" in ctx:
            await ctx["pool"].close()
        log.info("worker stopped")

    return queue.WorkerSpec(
        jobs={queue.CONSUME: consume_event},
        crons=[sweeper.schedule(settings), *cleanup.schedules(settings)],
        on_startup=startup,
        on_shutdown=shutdown,
    )


def build(settings: Settings, **overrides):
    """A worker for these settings, not started (tests run it in burst mode)."""
    from aipt.queue import runner

    return runner.build(settings, spec(settings), **overrides)
