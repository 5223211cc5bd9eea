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


def _rung_for(ctx: dict) -> int | None:
    """The attempt this job was enqueued for (its id is stripe:<event id>:<attempt>), if it says."""
    _, _, attempt = str(ctx.get("job_id", "")).rpartition(":")
    return int(attempt) if attempt.isdigit() else None


def _early_retry(ctx: dict, state) -> bool:
    """Whether the event waits for a retry that this very job was enqueued for.

    retry_in may already be <= 0: the job's first look (consume_due_event) came a hair before next_retry
    and this second look a hair after it. That job is on time now, and must run, not be dropped.
    """
    return (state["status"] == "error" and state["retry_in"] is not None
            and _rung_for(ctx) == state["failures"] + 1)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def consume_event(ctx: dict, event_id: str) -> str:
    # Every line about the event carries event_id, event_type and attempt (null until known; the
    # attempt the job was rung for until Postgres says) and its own duration_ms.
    with structlog.contextvars.bound_contextvars(event_id=event_id, event_type=None, attempt=_rung_for(ctx)):
        return await _consume(ctx, event_id)


async def _consume(ctx: dict, event_id: str) -> str:
    settings: Settings = ctx["settings"]
    started = time.perf_counter()
    try:
        async with ctx["pool"].acquire() as conn:
            try:
                row = await conn.fetchrow(db.queries["consume_due_event"], event_id,
                                          settings.stripe.refuses(True), settings.stripe.refuses(False))
            except asyncpg.PostgresError as exc:
                if isinstance(exc, db.UNAVAILABLE):
                    raise
                return await _failed(ctx, conn, event_id, exc, started)
            if row is None:
                state = await conn.fetchrow(db.queries["event_state"], event_id)
    except db.UNAVAILABLE as exc:
        # Nothing was recorded: the row is untouched, so trying later is safe (the sweeper would too).
        log.warning("database unavailable; job retried later", error=str(exc) or type(exc).__name__,
                    duration_ms=_ms(started))
        raise Retry(defer=settings.retry.base_seconds or 1) from exc
    if row is None:
        if state is None:  # never stored, or gone with retention while a stale job waited
            log.info("event not due: no such event", duration_ms=_ms(started))
            return "not_due"
        if _early_retry(ctx, state):
            # This job is that retry, started by the worker's clock a little before Postgres' (arq rounds
            # to the millisecond; a database on another host has its own clock). Dropped, it would
            # wait for the sweeper; deferred by what Postgres says is left, it runs on time.
            log.info("retry started early; deferred to its time", event_type=state["event_type"],
                     retry_in_ms=round(state["retry_in"] * 1000, 2), duration_ms=_ms(started))
            raise Retry(defer=max(state["retry_in"], 0))
        log.info("event not due (done, dead, or its retry is later)", event_type=state["event_type"],
                 status=state["status"], next_retry=state["next_retry"] and state["next_retry"].isoformat(),
                 duration_ms=_ms(started))
        return "not_due"
    elapsed = time.perf_counter() - started
    ctx["tally"].note(row["outcome"], row["attempt"])
    metrics.EVENTS.labels(event_type=row["event_type"], outcome=row["outcome"]).inc()
    metrics.EVENT_SECONDS.observe(elapsed)
    metrics.EVENT_ATTEMPTS.observe(row["attempt"])
    log.info("event " + row["outcome"], event_type=row["event_type"], attempt=row["attempt"],
             duration_ms=round(elapsed * 1000, 2))
    return row["outcome"]


async def _failed(ctx: dict, conn: asyncpg.Connection, event_id: str, exc: Exception, started: float) -> str:
    settings: Settings = ctx["settings"]
    elapsed = time.perf_counter() - started
    head = await conn.fetchrow(db.queries["event_attempt"], event_id)
    if head is None:
        log.error("event does not exist", error=str(exc), duration_ms=_ms(started))
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
    ctx["tally"].note(outcome, attempt)
    metrics.EVENTS.labels(event_type=head["event_type"], outcome=outcome).inc()
    metrics.EVENT_SECONDS.observe(elapsed)
    metrics.EVENT_ATTEMPTS.observe(attempt)
    if dead:
        await _announce_death(ctx, conn, event_id, elapsed)
        return "dead"
    log.warning("event failed; retry scheduled", error=str(exc), next_retry=next_retry.isoformat(),
                duration_ms=round(elapsed * 1000, 2))
    try:
        await queue.enqueue_event(ctx["redis"], event_id, attempt + 1, at=next_retry)
    except Exception as enqueue_exc:  # noqa: BLE001 - the sweeper picks up due retries from Postgres
        log.warning("retry not enqueued; the sweeper will pick it up", error=str(enqueue_exc), duration_ms=_ms(started))
    return "retry"


async def _announce_death(ctx: dict, conn: asyncpg.Connection, event_id: str, elapsed: float) -> None:
    settings: Settings = ctx["settings"]
    claim = await conn.fetchrow(db.queries["claim_dead_alert"], event_id)
    if claim is None:
        return
    log.error("event dead: no more automatic attempts", error=claim["error_message"], attempts=claim["attempts"],
              dead_count=claim["dead_count"], duration_ms=round(elapsed * 1000, 2))
    alerts.send(
        settings,
        f":rotating_light: Stripe event {event_id} ({claim['event_type']}) is dead after "
        f"{claim['attempts']} attempt(s): {claim['error_message']}. Fix the cause, then `aipt dlq requeue {event_id}`; "
        f"one that must never apply: `aipt dlq discard {event_id} --reason ...` (docs/operations.md).",
    )
    if claim["dead_count"] == settings.alerts.dead_threshold:
        alerts.send(settings, f":warning: {claim['dead_count']} Stripe events are dead. See `aipt dlq list`.")
