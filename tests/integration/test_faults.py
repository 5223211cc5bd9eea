"""Postgres going away under the service: every connection-gone error means "retry later", never a 500 or
a dropped job, and the sweeper says so in one warning line."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from aipt import db, fixtures
from ingest.app import create_app
from tests.servers import captured_logs, make_settings, post_event, through
from worker import sweeper


@pytest.mark.parametrize("error", [
    asyncpg.InternalClientError("cannot switch to state 15; another operation is in progress"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.ConnectionFailureError("connection failure"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    ConnectionResetError(104, "Connection reset by peer"),
])  # fmt: skip
def test_every_connection_gone_error_means_unavailable(error):
    assert isinstance(error, db.UNAVAILABLE)


def test_a_wrong_statement_is_not_unavailable():
    assert not isinstance(asyncpg.UndefinedColumnError("column x does not exist"), db.UNAVAILABLE)


async def terminate_others(conn) -> int:
    """What a Postgres restart does to every other session of this database."""
    return await conn.fetchval(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity"
        " where datname = current_database() and pid <> pg_backend_pid()")  # fmt: skip


async def test_webhooks_across_a_restart_are_200_or_503_never_500(db_url, conn):
    app = create_app(make_settings(db_url, ratelimit={"webhook_lease": 1}))
    events = [fixtures.load("payment_intent.succeeded") for _ in range(6)]
    for i, e in enumerate(events):
        e["id"] = f"evt_restart_{i}"
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
            assert (await post_event(c, events[0])).status_code == 200
            statuses = []
            for e in events[1:]:
                await terminate_others(conn)  # every pooled connection dies between deliveries
                statuses.append((await post_event(c, e)).status_code)
            assert set(statuses) <= {200, 503}, statuses
            for e, status in zip(events[1:], statuses, strict=True):  # Stripe retries what was 503
                if status == 503:
                    assert (await post_event(c, e)).status_code == 200
    stored = {r[0] for r in await conn.fetch("select id from public.stripe_events")}
    assert stored == {e["id"] for e in events}


async def test_the_sweeper_says_a_database_outage_in_one_warning_line(db_url, redis, pg_proxy):
    s = make_settings(through(db_url, pg_proxy))
    pool = await asyncpg.create_pool(through(db_url, pg_proxy), min_size=0, max_size=2, timeout=2)
    try:
        pg_proxy.cut()
        with captured_logs() as logs:
            assert await sweeper.sweep({"settings": s, "pool": pool, "redis": redis}) == 0
        assert [(e["log_level"], e["event"]) for e in logs] == [("warning", "sweeper skipped: database unavailable")]
        pg_proxy.restore()
        assert await asyncio.wait_for(sweeper.sweep({"settings": s, "pool": pool, "redis": redis}), 10) == 0
    finally:
        pg_proxy.restore()
        await pool.close()
