"""The doorbell: everything that knows about arq and Redis lives here, so the queue can be swapped.

Postgres holds the events; a job only says "look at event X now". Job ids are derived from the event
id and the attempt number, so the same ring twice is one job, while a retry is a new one.
"""

from __future__ import annotations

import datetime as dt
import json

from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import ConnectionPool

from aipt.settings import Settings

CONSUME = "consume_event"


def redis_settings(settings: Settings) -> RedisSettings:
    settings.require("redis_url")
    return RedisSettings.from_dsn(settings.redis_url)


def connect(settings: Settings) -> ArqRedis:
    """A lazy client: it connects on first use, so a Redis outage never blocks start-up."""
    settings.require("redis_url")
    pool = ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    return ArqRedis(pool, default_queue_name=settings.queue.name)


def job_id(event_id: str, attempt: int) -> str:
    return f"stripe:{event_id}:{attempt}"


async def enqueue_event(redis: ArqRedis, event_id: str, attempt: int = 1, at: dt.datetime | None = None) -> bool:
    """Ring for one attempt of an event; False when that attempt is already queued or running."""
    jid = job_id(event_id, attempt)
    if await redis.enqueue_job(CONSUME, event_id, _job_id=jid, _defer_until=at) is not None:
        return True
    # arq refused: the job key exists. If the queue lost the job (evicted, partly flushed) and no
    # worker holds it, that key is an orphan that would block this event for a day: clear it.
    queued = await redis.zscore(redis.default_queue_name, jid) is not None
    if queued or await redis.exists(in_progress_key_prefix + jid):
        return False
    await redis.delete(job_key_prefix + jid)
    return await redis.enqueue_job(CONSUME, event_id, _job_id=jid, _defer_until=at) is not None


async def queue_depth(redis: ArqRedis) -> int:
    return await redis.zcard(redis.default_queue_name)


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


async def close(redis: ArqRedis) -> None:
    await redis.aclose(close_connection_pool=True)
