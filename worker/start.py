"""arq's Worker, with two changes: a job is claimed in one Redis round trip instead of four, and
losing Redis no longer ends the worker. Its heartbeat carries our counts (worker/counters.py), not arq's.

arq claims a job with WATCH, EXISTS, ZSCORE and MULTI/EXEC, one round trip each, and its poll loop
claims jobs one after another: with jobs that wait on Postgres, those serial round trips, not the
jobs, set a worker's pace. The script below makes the same checks and the same write atomically in
Redis, so the claim means what arq's does: not already in progress, still queued, already due.

arq lets a Redis error end the worker process, at start-up after a few tries and mid-run at once (a
restart loop, on a platform that backs off). Nothing is lost in Redis that Postgres does not also
know (the sweeper re-enqueues pending events), so the worker waits for Redis instead, and says so
once per outage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time

from arq.connections import create_pool
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker as ArqWorker
from arq.worker import logger
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aipt import queue
from aipt.logs import log

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
                score = await claim(keys=[in_progress_key_prefix + job_id, self.queue_name],
                                    args=[job_id, timestamp_ms(), timeout_ms])
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
        info = (f"{dt.datetime.now():%b-%d %H:%M:%S} last hour: "
                + " ".join(f"{k}={v}" for k, v in counts.items()) + f" ongoing={ongoing} queued={queued}")
        await self.pool.psetex(self.health_check_key, int((self.health_check_interval + 1) * 1000), info.encode())
        if tally:
            unsent = tally.take_unsent()
            try:
                await queue.add_counts(self.pool, unsent)
            except BaseException:
                tally.give_back(unsent)
                raise
