"""Running jobs: arq's Worker, built from a WorkerSpec, with three changes and our own heartbeat.

- A job is claimed in one Redis round trip instead of four. arq claims with WATCH, EXISTS, ZSCORE and
  MULTI/EXEC, one round trip each, and its poll loop claims jobs one after another: with jobs that wait
  on Postgres, those serial round trips, not the jobs, set a worker's pace. CLAIM makes the same checks
  and the same write atomically in Redis, so a claim means what arq's does: not already in progress,
  still queued, already due.
- Losing Redis no longer ends the worker. arq lets a Redis error end the process, at start-up after a
  few tries and mid-run at once (a restart loop, on a platform that backs off). Nothing is lost in Redis
  that Postgres does not also know (the sweeper re-enqueues pending events), so the worker waits for
  Redis instead, and says so once per outage.
- Jobs get what they need as arguments: a consume job its attempt (enqueued with it), a cron run its
  slot (the time it was scheduled for, which arq keeps in the cron job's id). A job that raises Defer
  runs again later.

The heartbeat carries the tally (tally.py), not arq's job counts. This module leans on arq internals
(Worker.start_jobs' loop, sem, job_counter, _release_sem_dec_counter_on_complete, _pool, the cron
job id, the log format strings); tests/unit/test_queue_pins.py fails when any of them changes shape.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import time

import uvloop
from arq import Retry, cron, func
from arq.connections import RedisSettings, create_pool
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker as ArqWorker
from arq.worker import logger
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aipt.logs import log
from aipt.queue.enqueue import JOB_PREFIX, add_counts, health_check_key
from aipt.queue.jobs import Cron, Defer, WorkerSpec
from aipt.queue.tally import Tally
from aipt.settings import Settings

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
REDIS_RETRY_SECONDS = 1.0

# KEYS: in-progress key, queue; ARGV: job id, now (ms), in-progress timeout (ms). The job's score, or nil.
CLAIM = """
if redis.call('exists', KEYS[1]) == 1 then return nil end
local score = redis.call('zscore', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return nil end
redis.call('psetex', KEYS[1], ARGV[3], '1')
return score
"""

# arq's two INFO lines per job ("  0.01s → stripe:evt_…:1(…)", "  0.00s ← stripe:evt_…:1 ● …"), as format strings.
JOB_LINES = ("%6.2fs → %s(%s)%s", "%6.2fs ← %s ● %s")


def _not_a_consume_job_line(record: logging.LogRecord) -> bool:
    """Drops arq's two INFO lines per consume job: the job writes its own line with the event id, outcome
    and duration, and arq's pair cost ~12% of a worker's throughput. Cron jobs, retries and aborts keep
    arq's lines."""
    return not (
        record.levelno == logging.INFO and record.msg in JOB_LINES and str(record.args[1]).startswith(JOB_PREFIX)
    )


def cron_slot(job_id: str | None) -> dt.datetime | None:
    """The time a unique arq cron job was scheduled for: its id is 'cron:<name>:<unix ms>'."""
    _, _, ms = str(job_id or "").rpartition(":")
    return dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC) if ms.isdigit() else None


def _job(name: str, run):
    """arq's function for a job: Defer becomes arq's Retry (which is not counted as an attempt of ours)."""

    @functools.wraps(run)
    async def job(ctx: dict, *args, **kwargs):
        try:
            return await run(ctx, *args, **kwargs)
        except Defer as exc:
            raise Retry(defer=exc.seconds) from exc

    return func(job, name=name, max_tries=1000)


def _cron(c: Cron):
    """arq's cron for a Cron: unique (one run per slot however many workers), its slot passed in."""

    async def run(ctx: dict):
        return await c.run(ctx, cron_slot(ctx.get("job_id")))

    run.__qualname__ = run.__name__ = c.name.replace(":", "_")
    if c.every_seconds is not None:
        every = c.every_seconds
        when = (
            dict(second=set(range(0, 60, every)))
            if every < 60
            else dict(minute=set(range(0, 60, every // 60)), second={0})
        )
    else:
        hour, minute = c.daily_at
        when = dict(hour={hour}, minute={minute}, second={0})
    return cron(run, name=c.name, run_at_startup=c.at_startup, unique=True, timeout=c.timeout, **when)


class Worker(ArqWorker):
    _redis_down_since: float | None = None

    async def main(self) -> None:
        """arq's, after waiting for Redis: arq's own connect gives up after a few tries, ending the process."""
        while self._pool is None:
            try:
                self._pool = await create_pool(
                    dataclasses.replace(self.redis_settings, conn_retries=0),
                    job_deserializer=self.job_deserializer,
                    job_serializer=self.job_serializer,
                    default_queue_name=self.queue_name,
                    expires_extra_ms=self.expires_extra_ms,
                )
            except REDIS_DOWN as exc:
                await self._redis_down(exc)
        self._redis_up()
        await super().main()

    async def _poll_iteration(self) -> None:
        """arq's, except that a Redis error (from a claim, a heartbeat, a cron or a finishing job) is waited out."""
        try:
            await super()._poll_iteration()
        except REDIS_DOWN as exc:
            await self._redis_down(exc)
            return
        self._redis_up()

    async def _redis_down(self, exc: Exception) -> None:
        if self._redis_down_since is None:
            self._redis_down_since = time.monotonic()
            log.warning("redis unavailable; the worker waits for it", error=str(exc) or type(exc).__name__)
        await asyncio.sleep(REDIS_RETRY_SECONDS)

    def _redis_up(self) -> None:
        if self._redis_down_since is not None:
            log.info("redis available again", down_seconds=round(time.monotonic() - self._redis_down_since, 1))
            self._redis_down_since = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs (0.26-0.28), with its WATCH/MULTI claim replaced by CLAIM."""
        claim = self.pool.register_script(CLAIM)
        timeout_ms = int(self.in_progress_timeout_s * 1000)
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            try:
                score = await claim(
                    keys=[in_progress_key_prefix + job_id, self.queue_name], args=[job_id, timestamp_ms(), timeout_ms]
                )
            except BaseException:  # Redis failed, or we were cancelled: give the slot back (arq's own leaks it)
                self._release_sem_dec_counter_on_complete()
                raise
            if score is None:  # running elsewhere, finished meanwhile, or re-enqueued for later
                self._release_sem_dec_counter_on_complete()
                logger.debug("job %s already running elsewhere", job_id)
                continue
            t = self.loop.create_task(self.run_job(job_id, int(float(score))))
            t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = t

    async def record_health(self) -> None:
        """arq's heartbeat line, with what this worker's jobs did in the last hour instead of arq's job counts
        (ours never raise, so arq's say 0 failures after many); the counts also go to the shared tally."""
        now = time.time()
        if now - self._last_health_check < self.health_check_interval:
            return
        self._last_health_check = now
        tally = self.ctx.get("tally")
        counts = tally.last_hour() if tally else {}
        ongoing = sum(not t.done() for t in self.tasks.values())
        queued = await self.pool.zcard(self.queue_name)
        info = (
            f"{dt.datetime.now():%b-%d %H:%M:%S} last hour: "
            + " ".join(f"{k}={v}" for k, v in counts.items())
            + f" ongoing={ongoing} queued={queued}"
        )
        await self.pool.psetex(self.health_check_key, int((self.health_check_interval + 1) * 1000), info.encode())
        if tally:
            unsent = tally.take_unsent()
            try:
                await add_counts(self.pool, unsent)
            except BaseException:
                tally.give_back(unsent)
                raise


def build(settings: Settings, spec: WorkerSpec, **overrides) -> Worker:
    """The worker for `spec`, configured from [queue]; `overrides` are arq Worker options (tests: burst...).

    arq's own retry and result bookkeeping are turned down: Postgres counts attempts, and a kept result
    would block a requeue's job id.
    """
    settings.require("database_url", "redis_url")
    logging.getLogger("arq.worker").addFilter(_not_a_consume_job_line)  # once: addFilter skips a repeat

    async def startup(ctx: dict) -> None:
        ctx["settings"], ctx["tally"] = settings, Tally()
        if spec.on_startup:
            await spec.on_startup(ctx)

    async def shutdown(ctx: dict) -> None:
        if spec.on_shutdown:
            await spec.on_shutdown(ctx)
        try:  # the last minutes' counts; Redis gone at shutdown loses only those
            await add_counts(ctx["redis"], ctx["tally"].take_unsent())
        except Exception:
            log.info("the last counts were not sent: redis unavailable")

    q = settings.queue
    options = dict(
        functions=[_job(name, run) for name, run in spec.jobs.items()],
        cron_jobs=[_cron(c) for c in spec.crons],
        on_startup=startup,
        on_shutdown=shutdown,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        queue_name=q.name,
        max_jobs=q.max_jobs,
        job_timeout=q.job_timeout_seconds,
        poll_delay=q.poll_delay_seconds,
        health_check_interval=q.health_check_seconds,
        health_check_key=health_check_key(settings),
        keep_result=0,
        job_completion_wait=q.shutdown_grace_seconds,
    )
    options.update(overrides)
    return Worker(**options)


def run(settings: Settings, spec: WorkerSpec) -> None:
    """Run a worker until it is told to stop (SIGINT, SIGTERM), on uvloop as the web process is."""
    # arq runs on the thread's current loop.
    asyncio.set_event_loop(uvloop.new_event_loop())
    build(settings, spec).run()
