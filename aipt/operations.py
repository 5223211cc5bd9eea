"""What operators do to events: requeue, retry, replay, discard, and waiting for the outcome.

Each action is one admin-only SQL function (schema/80_operator_actions.sql), which checks the event's
state, changes it and records who did it; then, for the actions that want the worker, a ring on the
queue. A ring that fails is not an error: the change is committed, and the sweeper enqueues what
Postgres says is due. The CLI and psql share the functions, so an incident closes the same way from both.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from aipt import db, queue

# What an event is, in operators' words (public.stripe_event_state).
STATES = ("pending", "ok", "skipped", "retrying", "dead", "discarded")


class OperationError(Exception):
    """The database refused the action; the message says why (and, when it knows, what to run instead)."""


def operator() -> str:
    """Who is acting, for the event's history: AIPT_OPERATOR, else user@host."""
    return os.environ.get("AIPT_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def refusal(exc: asyncpg.PostgresError) -> str:
    """The database's refusal in one line, with its hint (which names the aipt command to run instead)."""
    hint = getattr(exc, "hint", None)
    return f"{exc}" + (f" (hint: {hint})" if hint else "")


async def _call(conn: asyncpg.Connection, sql: str, *args):
    try:
        return await conn.fetchval(sql, *args)
    except asyncpg.PostgresError as exc:
        if isinstance(exc, db.UNAVAILABLE):
            raise
        raise OperationError(refusal(exc)) from None


async def _ring(redis, event_id: str, attempt: int, warn: Callable[[str], None]) -> None:
    try:
        await queue.ring_now(redis, event_id, attempt)
    except Exception as exc:
        warn(f"{event_id} is due but not enqueued ({exc}); the sweeper will pick it up within a minute")


async def requeue(conn, redis, event_id: str, by: str, warn: Callable[[str], None] = lambda _: None) -> int:
    """A dead event gets one more attempt now; returns that attempt's number."""
    attempt = await _call(conn, db.queries["requeue_event"], event_id, by)
    await _ring(redis, event_id, attempt, warn)
    return attempt


async def retry(conn, redis, event_id: str, by: str, warn: Callable[[str], None] = lambda _: None) -> int:
    """A retrying event's next attempt runs now instead of at its time; returns that attempt's number."""
    attempt = await _call(conn, db.queries["retry_event"], event_id, by)
    await _ring(redis, event_id, attempt, warn)
    return attempt


async def replay(conn, redis, event_id: str, by: str, warn: Callable[[str], None] = lambda _: None) -> int:
    """An applied (or skipped) event is applied once more from its payload; returns the attempt number."""
    attempt = await _call(conn, db.queries["replay_event"], event_id, by)
    await _ring(redis, event_id, attempt, warn)
    return attempt


async def discard(conn, event_id: str, reason: str, by: str) -> str:
    """The event is resolved without being applied and needs no attention any more."""
    return await _call(conn, db.queries["discard_event"], event_id, reason, by)


@dataclass
class Progress:
    event_id: str
    status: str
    attempts: int
    next_retry: object = None
    last_error: str | None = None

    def describe(self) -> str:
        if self.status == "retrying":
            return f"{self.event_id}: failed (attempt {self.attempts}), retrying at {self.next_retry:%H:%M:%S}: {self.last_error}"
        if self.status == "dead":
            return f"{self.event_id}: dead after attempt {self.attempts}: {self.last_error}"
        return f"{self.event_id}: {self.status}" + (" (waiting)" if self.status == "pending" else "")


async def progress(conn, event_ids: list[str]) -> dict[str, Progress]:
    rows = await conn.fetch(db.queries["event_progress"], event_ids)
    return {r["event_id"]: Progress(**dict(r)) for r in rows}


async def wait(
    conn, started: dict[str, int], timeout: float, on_settled: Callable[[Progress], None], poll: float = 0.2
) -> list[str]:
    """Wait until each event has run the attempt it was given (`started`: id → that attempt's number).

    Calls on_settled once per event as it comes to rest; returns the ids still unsettled at the timeout.
    """
    left = {event_id: attempt - 1 for event_id, attempt in started.items()}
    deadline = time.monotonic() + timeout
    while left:
        for event_id, now in (await progress(conn, list(left))).items():
            ran = now.attempts > left[event_id] or now.status in ("ok", "skipped", "discarded")
            if ran:
                del left[event_id]
                on_settled(now)
        if not left or time.monotonic() >= deadline:
            break
        await asyncio.sleep(poll)
    return list(left)
