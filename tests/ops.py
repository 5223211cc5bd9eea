"""Helpers for the operations tests (cleanups, status, metrics): backdated events and a live worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from aipt import queue
from tests.servers import wait_for


async def event(conn, status: str, received: float, processed: float | None = None, failure: dict | None = None) -> str:
    """A stored event received `received` days ago (processed `processed` days ago), with a failure row if given.

    failure: {"retry_in": minutes (negative: overdue)} for a retrying event, {"dead": days} for a dead
    one, {"resolved": days} for one that succeeded later.
    """
    event_id = f"evt_{uuid.uuid4().hex[:20]}"
    await conn.execute(
        """insert into public.stripe_events (id, type, created, payload, status, received_at, processed_at)
           values ($1, 'invoice.payment_succeeded', 0, '{}', $2,
                   now() - make_interval(secs => $3::float8 * 86400), now() - make_interval(secs => $4::float8 * 86400))""",
        event_id,
        status,
        received,
        processed,
    )
    if failure is not None:
        await conn.execute(
            """insert into public.webhook_failures (event_id, event_type, failure_count, max_retries, next_retry, dead_at,
                                                    resolved_at, first_failure)
               values ($1, 'invoice.payment_succeeded', 1, 3, now() + make_interval(mins => $2),
                       now() - make_interval(secs => $3::float8 * 86400), now() - make_interval(secs => $4::float8 * 86400),
                       now() - make_interval(secs => $5::float8 * 86400))""",
            event_id,
            failure.get("retry_in"),
            failure.get("dead"),
            failure.get("resolved"),
            received,
        )
    return event_id


async def remaining(conn, table: str = "stripe_events") -> set[str]:
    column = "id" if table == "stripe_events" else "event_id"
    return {r[0] for r in await conn.fetch(f"select {column} from public.{table}")}


@contextlib.asynccontextmanager
async def running_worker(settings):
    """A real worker (not burst) on a task of its own until the block ends; yields it and the task.

    On the way out it stops taking jobs and lets the running ones finish before closing: arq's close()
    would cancel them, and then raise their CancelledError in the test's teardown."""
    from worker.main import build

    w = build(settings, handle_signals=False)
    task = asyncio.create_task(w.main())
    try:
        yield w, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.gather(*w.tasks.values(), return_exceptions=True)
        await w.close()


@contextlib.asynccontextmanager
async def live_worker(settings):
    """A running worker once it is up: it writes the heartbeat and runs the sweeper."""
    handlers = logging.root.handlers[:]
    redis = queue.connect(settings)
    try:
        async with running_worker(settings) as (w, _):
            try:
                await wait_for(lambda: redis.exists(queue.health_check_key(settings)), timeout=10)
                yield w
            finally:
                logging.root.handlers[:] = handlers  # a command run meanwhile logged to its runner's closed stream
    finally:
        await queue.close(redis)
