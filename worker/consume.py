"""The consume job: apply one stored event, or record why it failed and when to try again.

Attempts are counted in Postgres (webhook_failures), never by arq: a job may run twice, be lost
with Redis, or be killed mid-flight, and the event row's lock and status still make it apply once.
"""

from __future__ import annotations

import time

import asyncpg
import structlog
from arq import Retry

from aipt import alerts, db, metrics, queue
from aipt.logs import log
from aipt.settings import Settings

async def consume_event(ctx: dict, event_id: str) -> str:
    with structlog.contextvars.bound_contextvars(event_id=event_id):
        try:
            return await _consume(ctx, event_id)
        finally:
            structlog.contextvars.unbind_contextvars("event_type", "attempt")


async def _consume(ctx: dict, event_id: str) -> str:
    settings: Settings = ctx["settings"]
    started = time.perf_counter()
    try:
        async with ctx["pool"].acquire() as conn:
            try:
                row = await conn.fetchrow(db.queries["consume_due_event"], event_id)
            except asyncpg.PostgresError as exc:
                if isinstance(exc, db.UNAVAILABLE):
                    raise
                return await _failed(ctx, conn, event_id, exc, time.perf_counter() - started)
    except db.UNAVAILABLE as exc:
        # Nothing was recorded: the row is untouched, so trying later is safe (the sweeper would too).
        log.warning("database unavailable; job retried later", error=str(exc) or type(exc).__name__)
        raise Retry(defer=settings.retry.base_seconds or 1) from exc
    if row is None:
        log.info("event not due (done, dead, or its retry is later)")
        return "not_due"
    elapsed = time.perf_counter() - started
    metrics.EVENTS.labels(event_type=row["event_type"], outcome=row["outcome"]).inc()
    metrics.EVENT_SECONDS.observe(elapsed)
    metrics.EVENT_ATTEMPTS.observe(row["attempt"])
    log.info("event " + row["outcome"], event_type=row["event_type"], attempt=row["attempt"],
             duration_ms=round(elapsed * 1000, 2))
    return row["outcome"]


async def _failed(ctx: dict, conn: asyncpg.Connection, event_id: str, exc: Exception, elapsed: float) -> str:
    settings: Settings = ctx["settings"]
    head = await conn.fetchrow(db.queries["event_attempt"], event_id)
    if head is None:
        log.error("event does not exist", error=str(exc))
        return "missing"
    structlog.contextvars.bind_contextvars(event_type=head["event_type"], attempt=head["attempt"])
    r = settings.retry
    attempt, next_retry, dead = await conn.fetchrow(
        db.queries["record_failure"], event_id, str(exc), getattr(exc, "sqlstate", None) or type(exc).__name__,
        r.attempts, r.base_seconds, r.factor, r.cap_seconds,
    )
    if attempt is None:
        return "duplicate"  # another attempt applied it meanwhile
    outcome = "dead" if dead else "retry"
    metrics.EVENTS.labels(event_type=head["event_type"], outcome=outcome).inc()
    metrics.EVENT_SECONDS.observe(elapsed)
    metrics.EVENT_ATTEMPTS.observe(attempt)
    if dead:
        await _announce_death(ctx, conn, event_id)
        return "dead"
    log.warning("event failed; retry scheduled", error=str(exc), next_retry=next_retry.isoformat(),
                duration_ms=round(elapsed * 1000, 2))
    try:
        await queue.enqueue_event(ctx["redis"], event_id, attempt + 1, at=next_retry)
    except Exception as enqueue_exc:  # noqa: BLE001 - the sweeper picks up due retries from Postgres
        log.warning("retry not enqueued; the sweeper will pick it up", error=str(enqueue_exc))
    return "retry"


async def _announce_death(ctx: dict, conn: asyncpg.Connection, event_id: str) -> None:
    settings: Settings = ctx["settings"]
    claim = await conn.fetchrow(db.queries["claim_dead_alert"], event_id)
    if claim is None:
        return
    log.error("event dead: no more automatic attempts", error=claim["error_message"], attempts=claim["attempts"],
              dead_count=claim["dead_count"])
    alerts.send(
        settings,
        f":rotating_light: Stripe event {event_id} ({claim['event_type']}) is dead after "
        f"{claim['attempts']} attempt(s): {claim['error_message']}. Fix the cause, then `aipt dlq requeue {event_id}`.",
    )
    if claim["dead_count"] == settings.alerts.dead_threshold:
        alerts.send(settings, f":warning: {claim['dead_count']} Stripe events are dead. See `aipt dlq list`.")
