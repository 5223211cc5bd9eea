"""Helpers for the operations tests (cleanups, status, metrics): backdated events."""

from __future__ import annotations

import uuid


async def event(conn, status: str, received: float, processed: float | None = None, failure: dict | None = None) -> str:
    """A stored event received `received` days ago (processed `processed` days ago), with a failure row if given.

    failure: {"retry_in": minutes (negative: overdue)} for a retrying event, {"dead": days} for a dead
    one, {"resolved": days} for one that succeeded later.
    """
    event_id = f"evt_{uuid.uuid4().hex[:20]}"
    await conn.execute(
        """insert into public.stripe_events (event_id, event_type, created, payload, status, received_at, processed_at)
           values ($1, 'invoice.payment_succeeded', 0, '{}', $2,
                   now() - make_interval(secs => $3::float8 * 86400), now() - make_interval(secs => $4::float8 * 86400))""",
        event_id, status, received, processed,
    )
    if failure is not None:
        await conn.execute(
            """insert into public.webhook_failures (event_id, event_type, failure_count, max_retries, next_retry, dead_at,
                                                    resolved_at, first_failure)
               values ($1, 'invoice.payment_succeeded', 1, 3, now() + make_interval(mins => $2),
                       now() - make_interval(secs => $3::float8 * 86400), now() - make_interval(secs => $4::float8 * 86400),
                       now() - make_interval(secs => $5::float8 * 86400))""",
            event_id, failure.get("retry_in"), failure.get("dead"), failure.get("resolved"), received,
        )
    return event_id


async def remaining(conn, table: str = "stripe_events") -> set[str]:
    return {r["event_id"] for r in await conn.fetch(f"select event_id from public.{table}")}


async def remaining(conn, table: str = "stripe_events") -> set[str]:
    return {r["event_id"] for r in await conn.fetch(f"select event_id from public.{table}")}

