"""arq worker settings: the consume job, the crons (sweeper, cleanups), and the resources they share.

Built from our settings at start-up (arq reads a plain settings object), with arq's own retry and
result bookkeeping turned down: Postgres counts attempts, and a kept result would block requeues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvloop
from arq import func

from aipt import alerts, db, logs, metrics, queue
from aipt.logs import log
from aipt.settings import Settings
from worker import cleanup, gauges, sweeper
from worker.consume import consume_event
from worker.counters import Tally
from worker.start import Worker


def _not_a_consume_job_line(record: logging.LogRecord) -> bool:
    """Drops arq's two INFO lines per consume job ("→ stripe:…", "← stripe:… ●"): the job writes its own
    line with the event id, outcome and duration, and arq's pair cost ~12% of a worker's throughput.
    Cron jobs, retries and aborts keep arq's lines."""
    return not (record.levelno == logging.INFO and record.msg in ("%6.2fs → %s(%s)%s", "%6.2fs ← %s ● %s")
                and str(record.args[1]).startswith(queue.JOB_PREFIX))


def build(settings: Settings, **overrides) -> Worker:
    settings.require("database_url", "redis_url")
    logging.getLogger("arq.worker").addFilter(_not_a_consume_job_line)  # once: addFilter skips a repeat

    async def startup(ctx: dict) -> None:
        ctx["settings"] = settings
        ctx["tally"] = Tally()
        # min_size=0: a worker starts while Postgres is down and heals when it is back.
        ctx["pool"] = await db.create_pool(settings, min_size=0)
        metrics.register_worker()
        ctx["gauges"] = asyncio.get_running_loop().create_task(gauges.keep_fresh(ctx))
        log.info("worker started", queue=settings.queue.name, max_jobs=settings.queue.max_jobs,
                 loop=type(asyncio.get_running_loop()).__module__.partition(".")[0])

    async def shutdown(ctx: dict) -> None:
        if "gauges" in ctx:
            ctx["gauges"].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctx["gauges"]
        await alerts.drain()
        if "tally" in ctx:
            with contextlib.suppress(Exception):  # Redis gone at shutdown: those counts are lost, nothing else
                await queue.add_counts(ctx["redis"], ctx["tally"].take_unsent())
        if "pool" in ctx:
            await ctx["pool"].close()
        log.info("worker stopped")

    options = dict(
        functions=[func(consume_event, name=queue.CONSUME, max_tries=1000)],
        cron_jobs=[sweeper.schedule(settings), *cleanup.schedules(settings)],
        on_startup=startup,
        on_shutdown=shutdown,
        redis_settings=queue.redis_settings(settings),
        queue_name=settings.queue.name,
        max_jobs=settings.queue.max_jobs,
        job_timeout=settings.queue.job_timeout_seconds,
        poll_delay=settings.queue.poll_delay_seconds,
        health_check_interval=settings.queue.health_check_seconds,
        health_check_key=queue.health_check_key(settings),
        keep_result=0,
        job_completion_wait=settings.queue.shutdown_grace_seconds,
    )
    options.update(overrides)
    return Worker(**options)


def run(settings: Settings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    if settings.metrics.worker_port:
        m = settings.metrics
        try:
            metrics.serve(m.worker_port, m.worker_host)
            log.info("worker metrics served", host=m.worker_host, port=m.worker_port, path="/metrics")
        except OSError as exc:  # e.g. a second worker on the host: it still works, without a metrics port
            log.error("worker metrics not served", host=m.worker_host, port=m.worker_port, error=str(exc))
    # arq runs on the thread's current loop: make it uvloop, as the web process and bench/worker.py have.
    asyncio.set_event_loop(uvloop.new_event_loop())
    build(settings).run()
