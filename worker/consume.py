"""The consume job: apply one stored event, or record why it failed and when to try again.

Attempts are counted in Postgres (webhook_failures), never by the queue: a job may run twice, be lost
with Redis, or be killed mid-flight, and the event row's lock and status still make it apply once. The
attempt a job was rung for comes with it (None for a job enqueued before jobs carried it).
"""

from __future__ import annotations

import time

import asyncpg
import structlog

from aipt import alerts, db, metrics, queue
from aipt.logs import log
from aipt.settings import Settings

# What each outcome counts in the worker's tally (the heartbeat and `aipt status`).
TALLY = {"ok": ("applied",), "skipped": ("applied",), "retry": ("failed",), "dead": ("failed", "dead")}


def _tally(ctx: dict, outcome: str, attempt: int) -> None:
    kinds = TALLY.get(outcome, ())
    if kinds:
        ctx["tally"].count(*kinds, *(("retried",) if attempt > 1 else ()))


def _early_retry(rung_for: int | None, state) -> bool:
    """Whether the event waits for a retry that this very job was enqueued for.

    retry_in may already be <= 0: the job's first look (consume_due_event) came a hair before next_retry
    and this second look a hair after it. That job is on time now, and must run, not be dropped.
    """
    return state["status"] == "error" and state["retry_in"] is not None and rung_for == state["failures"] + 1


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def consume_event(ctx: dict, event_id: str, attempt: int | None = None) -> str:
    # Every line about the event carries event_id, event_type and attempt (null until known; the
    # attempt the job was rung for until Postgres says) and its own duration_ms.
    with structlog.contextvars.bound_contextvars(event_id=event_id, event_type=None, attempt=attempt):
        return await _consume(ctx, event_id, attempt)


async def _consume(ctx: dict, event_id: str, rung_for: int | None) -> str:
    settings: Settings = ctx["settings"]
    started = time.perf_counter()
    try:
        async with ctx["pool"].acquire() as conn:
            try:
                row = await conn.fetchrow(
                    db.queries["consume_due_event"],
                    event_id,
                    settings.stripe.refuses(True),
                    settings.stripe.refuses(False),
                )
            except asyncpg.PostgresError as exc:
                if isinstance(exc, db.UNAVAILABLE):
                    raise
                return await _failed(ctx, conn, event_id, exc, started)
            if row is None:
                state = await conn.fetchrow(db.queries["event_state"], event_id)
    except db.UNAVAILABLE as exc:
        # Nothing was recorded: the row is untouched, so trying later is safe (the sweeper would too).
        log.warning(
            "database unavailable; job retried later", error=str(exc) or type(exc).__name__, duration_ms=_ms(started)
        )
        raise queue.Defer(settings.retry.base_seconds or 1) from exc
    if row is None:
        if state is None:  # never stored, or gone with retention while a stale job waited
            log.info("event not due: no such event", duration_ms=_ms(started))
            return "not_due"
        if _early_retry(rung_for, state):
            # This job is that retry, started by the worker's clock a little before Postgres' (arq rounds
            # to the millisecond; a database on another host has its own clock). Dropped, it would
            # wait for the sweeper; deferred by what Postgres says is left, it runs on time.
            log.info(
                "retry started early; deferred to its time",
                event_type=state["event_type"],
                retry_in_ms=round(state["retry_in"] * 1000, 2),
                duration_ms=_ms(started),
            )
            raise queue.Defer(max(state["retry_in"], 0))
        log.info(
            "event not due (done, dead, or its retry is later)",
            event_type=state["event_type"],
            status=state["status"],
            next_retry=state["next_retry"] and state["next_retry"].isoformat(),
            duration_ms=_ms(started),
        )
        return "not_due"
    elapsed = time.perf_counter() - started
    _tally(ctx, row["outcome"], row["attempt"])
    metrics.EVENTS.labels(event_type=row["event_type"], outcome=row["outcome"]).inc()
    metrics.EVENT_SECONDS.observe(elapsed)
    metrics.EVENT_ATTEMPTS.observe(row["attempt"])
    log.info(
        "event " + row["outcome"],
        event_type=row["event_type"],
        attempt=row["attempt"],
        duration_ms=round(elapsed * 1000, 2),
    )
    return row["outcome"]


async def _failed(ctx: dict, conn: asyncpg.Connection, event_id: str, exc: Exception, started: float) -> str:
    """Record the failed attempt, and schedule its retry or announce its death: one call to Postgres."""
    settings: Settings = ctx["settings"]
    elapsed = time.perf_counter() - started
    error, r = str(exc), settings.retry
    try:
        row = await conn.fetchrow(
            db.queries["fail_event"],
            event_id,
            error,
            getattr(exc, "sqlstate", None) or type(exc).__name__,
            r.attempts,
            r.base_seconds,
            r.factor,
            r.cap_seconds,
        )
    except asyncpg.NoDataFoundError:
        log.error("event does not exist", error=error, duration_ms=_ms(started))
        return "missing"
    if row["attempt"] is None:
        return "duplicate"  # another attempt applied it meanwhile
    structlog.contextvars.bind_contextvars(event_type=row["event_type"], attempt=row["attempt"])
    outcome = "dead" if row["dead"] else "retry"
    _tally(ctx, outcome, row["attempt"])
    metrics.EVENTS.labels(event_type=row["event_type"], outcome=outcome).inc()
    metrics.EVENT_SECONDS.observe(elapsed)
    metrics.EVENT_ATTEMPTS.observe(row["attempt"])
    if row["dead"]:
        if row["alert"]:
            _announce_death(settings, event_id, row, error, elapsed)
        return "dead"
    log.warning(
        "event failed; retry scheduled",
        error=error,
        next_retry=row["next_retry"].isoformat(),
        duration_ms=round(elapsed * 1000, 2),
    )
    try:
        await queue.enqueue_event(ctx["redis"], event_id, row["attempt"] + 1, at=row["next_retry"])
    except Exception as enqueue_exc:
        log.warning("retry not enqueued; the sweeper will pick it up", error=str(enqueue_exc), duration_ms=_ms(started))
    return "retry"


def _announce_death(settings: Settings, event_id: str, row, error: str, elapsed: float) -> None:
    """Once per death (fail_stripe_event claimed it): the log line and the alert, and the threshold's."""
    log.error(
        "event dead: no more automatic attempts",
        error=error,
        attempts=row["attempt"],
        dead_count=row["dead_count"],
        duration_ms=round(elapsed * 1000, 2),
    )
    alerts.send(
        settings,
        f":rotating_light: Stripe event {event_id} ({row['event_type']}) is dead after "
        f"{row['attempt']} attempt(s): {error}. Fix the cause, then `aipt dlq requeue {event_id}`; "
        f"one that must never apply: `aipt dlq discard {event_id} --reason ...` (docs/operations.md).",
    )
    if row["dead_count"] == settings.alerts.dead_threshold:
        alerts.send(settings, f":warning: {row['dead_count']} Stripe events are dead. See `aipt dlq list`.")
