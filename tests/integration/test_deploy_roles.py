"""The roles the service may run as (README, "Deploying"): a login role that is a member of service_role,
and a login role that switches to service_role itself. For each, the whole pipeline: a webhook stored,
the limit checked, the event applied, a failure retried then dead and alerted, a requeue, a cleanup run,
and the operator's status. (The owner of the schema, which runs the migrations, is every other test.)"""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from aipt import fixtures, health, retention
from ingest.app import create_app
from tests.billing import LEGACY_CUSTOMER, USER, seed_catalogue
from tests.servers import make_settings, post_event, run_worker


def as_login(url: str, login: str, **query: str) -> str:
    parts = urlsplit(url)
    netloc = f"{login}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc, query="&".join(f"{k}={v}" for k, v in query.items())))


@pytest.fixture(params=["member", "switches"])
async def app_url(request, conn, db_url):
    """A login role for the service, of one kind; dropped at the end."""
    role = f"aipt_app_{uuid.uuid4().hex[:8]}"
    if request.param == "member":
        await conn.execute(f"create role {role} login in role service_role")
        url = as_login(db_url, role)
    else:
        # NOINHERIT: without the switch it may do nothing; with it, it is service_role (server setting role).
        await conn.execute(f"create role {role} login noinherit in role service_role")
        url = as_login(db_url, role, role="service_role")
    database = urlsplit(db_url).path.lstrip("/")
    await conn.execute(f'grant connect on database "{database}" to {role}')
    yield url
    await conn.execute(
        f"select pg_terminate_backend(pid) from pg_stat_activity where usename = '{role}'")  # fmt: skip
    await conn.execute(f'revoke connect on database "{database}" from {role}; drop role {role}')


async def test_the_whole_pipeline_runs_as_the_deploy_role(conn, app_url, redis):
    await seed_catalogue(conn)
    s = make_settings(app_url, retry={"attempts": 1})
    redis.default_queue_name = s.queue.name
    good, stranger = fixtures.load("checkout.session.completed"), fixtures.load("subscription_created", "legacy")
    app = create_app(s)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as client:
            for event in (good, stranger):
                r = await post_event(client, event)
                assert r.status_code == 200, r.text
            await app.state.doorbell.flush()
    await run_worker(s)
    statuses = dict(await conn.fetch("select id, status from public.stripe_events"))
    assert statuses == {good["id"]: "ok", stranger["id"]: "error"}
    assert await conn.fetchval(
        "select dead_at is not null from public.webhook_failures where event_id = $1", stranger["id"]
    )
    assert await conn.fetchval(
        "select alerted_at is not null from public.webhook_failures where event_id = $1", stranger["id"]
    )

    # The operator's tools, as the same role: requeue once the cause is fixed, status, a cleanup run.
    await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)
    import asyncpg

    from aipt import operations

    app_conn = await asyncpg.connect(app_url)
    try:
        assert await operations.requeue(app_conn, redis, stranger["id"], "test") == 2
    finally:
        await app_conn.close()
    await run_worker(s)
    assert await conn.fetchval("select status from public.stripe_events where id = $1", stranger["id"]) == "ok"
    report = await health.gather(s)
    assert report["postgres"] == "ok" and report["events"]["dead"] == 0
    outcome = await retention.run(s, "rate_limit")
    assert outcome.status == "ok", outcome.note
    assert (
        json.loads(await conn.fetchval("select counts from public.cleanup_runs where id = $1", outcome.run_id))
        == outcome.counts
    )
