"""The producer side: ring for events, and read what the queue says (depth, heartbeat, counts, crons).

Job ids are derived from the event id and the attempt number, so the same ring twice is one job, while
a retry is a new one. The attempt also travels as the job's argument: the job never parses its id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

from arq.connections import ArqRedis
from arq.constants import expires_extra_ms, in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import ConnectionPool

from aipt import metrics
from aipt.logs import log
from aipt.settings import Settings

CONSUME = "consume_event"


def connect(settings: Settings) -> ArqRedis:
    """A lazy client: it connects on first use, so a Redis outage never blocks start-up."""
    settings.require("redis_url")
    pool = ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    return ArqRedis(pool, default_queue_name=settings.queue.name)


JOB_PREFIX = "stripe:"


def job_id(event_id: str, attempt: int) -> str:
    return f"{JOB_PREFIX}{event_id}:{attempt}"


async def enqueue_event(redis: ArqRedis, event_id: str, attempt: int = 1, at: dt.datetime | None = None) -> bool:
    """Ring for one attempt of an event; False when that attempt is already queued or running."""
    jid = job_id(event_id, attempt)
    if await redis.enqueue_job(CONSUME, event_id, attempt, _job_id=jid, _defer_until=at) is not None:
        return True
    # arq refused: the job key exists. If the queue lost the job (evicted, partly flushed) and no
    # worker holds it, that key is an orphan that would block this event for a day: clear it.
    queued = await redis.zscore(redis.default_queue_name, jid) is not None
    if queued or await redis.exists(in_progress_key_prefix + jid):
        return False
    await redis.delete(job_key_prefix + jid)
    return await redis.enqueue_job(CONSUME, event_id, attempt, _job_id=jid, _defer_until=at) is not None


async def ring_now(redis: ArqRedis, event_id: str, attempt: int) -> bool:
    """Ring for an attempt to run now: a job queued for later (a retry in backoff) is moved to now."""
    jid = job_id(event_id, attempt)
    if await redis.zadd(redis.default_queue_name, {jid: int(time.time() * 1000)}, xx=True, ch=True):
        return True
    return await enqueue_event(redis, event_id, attempt)


async def queue_depth(redis: ArqRedis) -> int:
    return await redis.zcard(redis.default_queue_name)


def claim_seconds(settings: Settings) -> float:
    """How long the queue keeps a job claimed by a worker that died mid-job before another may run it:
    arq holds its in-progress key for the longest job timeout + 10 s."""
    return settings.queue.job_timeout_seconds + 10


def health_check_key(settings: Settings) -> str:
    """Where arq workers write their heartbeat (expires health_check_seconds + 1 s after the last one)."""
    return settings.queue.name + ":health-check"


async def heartbeat(redis: ArqRedis, key: str) -> tuple[str | None, float | None]:
    """The last heartbeat a worker wrote and the seconds it has left; (None, None) when no worker is alive."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        value, ttl_ms = await pipe.execute()
    if value is None:
        return None, None
    return value.decode(), (ttl_ms / 1000 if ttl_ms and ttl_ms > 0 else None)


def _cron_key(redis: ArqRedis, name: str) -> str:
    return f"{redis.default_queue_name}:cron:{name}"


async def note_cron_run(redis: ArqRedis, name: str, keep_seconds: int = 7 * 86400, **fields) -> None:
    """Remember the last run of a frequent cron (the sweeper) for `aipt status`."""
    await redis.set(_cron_key(redis, name), json.dumps(fields, default=str), ex=keep_seconds)


async def last_cron_run(redis: ArqRedis, name: str) -> dict | None:
    raw = await redis.get(_cron_key(redis, name))
    return None if raw is None else json.loads(raw)


def _counts_key(redis: ArqRedis, minute: int) -> str:
    return f"{redis.default_queue_name}:counts:{minute}"


async def add_counts(redis: ArqRedis, per_minute: dict[int, dict[str, int]]) -> None:
    """Add workers' outcome counts to per-minute hashes (kept two hours), which every worker shares."""
    if not per_minute:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for minute, counts in per_minute.items():
            key = _counts_key(redis, minute)
            for kind, n in counts.items():
                pipe.hincrby(key, kind, n)
            pipe.expire(key, 7200)
        await pipe.execute()


async def counts_last_hour(redis: ArqRedis) -> dict[str, int]:
    """Every worker's outcome counts of the last 60 minutes, summed."""
    now = int(time.time() // 60)
    async with redis.pipeline(transaction=False) as pipe:
        for minute in range(now - 59, now + 1):
            pipe.hgetall(_counts_key(redis, minute))
        hashes = await pipe.execute()
    total: dict[str, int] = {}
    for h in hashes:
        for kind, n in h.items():
            total[kind.decode()] = total.get(kind.decode(), 0) + int(n)
    return total


async def close(redis: ArqRedis) -> None:
    await redis.aclose(close_connection_pool=True)


# arq's enqueue_job for many first attempts in one round trip: the same keys, payload and dedup rule
# (a job or result key already there means the job exists), without WATCH/MULTI per job.
_ENQUEUE_MANY = """
local expires, job_prefix, result_prefix, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('exists', job_prefix .. id, result_prefix .. id) == 0 then
    redis.call('psetex', job_prefix .. id, expires, ARGV[i + 1])
    redis.call('zadd', KEYS[1], score, id)
  end
end
"""


async def enqueue_first_attempts(redis: ArqRedis, event_ids: list[str]) -> None:
    now_ms = int(time.time() * 1000)
    argv: list = [expires_extra_ms, job_key_prefix, result_key_prefix, now_ms]
    for event_id in event_ids:
        argv += [job_id(event_id, 1), serialize_job(CONSUME, (event_id, 1), {}, None, now_ms)]
    await redis.eval(_ENQUEUE_MANY, 1, redis.default_queue_name, *argv)


class Doorbell:
    """Rings for stored events in batches, off the request path: one Redis call per batch.

    Best effort by design: an id still in memory when the process dies, or a batch Redis refuses, is
    found by the sweeper, because the event row is already committed.
    """

    def __init__(self, redis: ArqRedis, max_batch: int = 500):
        self.redis, self.max_batch = redis, max_batch
        self._ids: list[str] = []
        self._wake = asyncio.Event()
        self._sending = asyncio.Lock()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def ring(self, event_id: str) -> None:
        self._ids.append(event_id)
        self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Send everything rung so far (waiting for a batch already on its way)."""
        async with self._sending:
            while self._ids:
                batch, self._ids = self._ids[: self.max_batch], self._ids[self.max_batch :]
                try:
                    await enqueue_first_attempts(self.redis, batch)
                except Exception as exc:
                    metrics.ENQUEUE_FAILURES.inc(len(batch))
                    log.warning("enqueue failed; the sweeper will pick them up", event_ids=batch, error=str(exc))

    async def close(self) -> None:
        """Send what is left and stop. No cancel: cancelling redis-py mid-command can hang its connection."""
        self._closing = True
        self._wake.set()
        if self._task:
            await self._task
        await self.flush()
