"""Live and test mode: a deployment accepts live events, test events, or both (the default); an event of a
mode it does not accept is stored and skipped with the reason, never applied."""

from __future__ import annotations

import json

import httpx
import pytest

from aipt import fixtures, queue
from aipt import settings as settings_mod
from aipt.queue import Tally
from ingest.app import create_app
from tests.billing import seed_catalogue, store
from tests.servers import make_settings, post_event
from worker.consume import consume_event


def live(event: dict) -> dict:
    event["livemode"] = True
    return event


async def test_ingest_stores_a_refused_mode_skipped_and_never_rings(conn, db_url, redis):
    await seed_catalogue(conn)
    s = make_settings(db_url, stripe={"accepted_modes": "live"})
    test_event, live_event = (
        fixtures.load("checkout.session.completed"),
        live(fixtures.load("payment_intent.succeeded")),
    )
    app = create_app(s)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
            for event in (test_event, live_event):
                r = await post_event(c, event)
                assert r.status_code == 200 and r.json() == {"received": True, "duplicate": False}
            await app.state.doorbell.flush()
    row = await conn.fetchrow("select status, error from public.stripe_events where id = $1", test_event["id"])
    assert row["status"] == "skipped" and row["error"].startswith("test-mode event not applied")
    assert await conn.fetchval("select status from public.stripe_events where id = $1", live_event["id"]) == "pending"
    assert await conn.fetchval("select count(*) from public.user_purchases") == 0
    redis.default_queue_name = s.queue.name
    assert await redis.zscore(s.queue.name, queue.job_id(test_event["id"], 1)) is None
    assert await redis.zscore(s.queue.name, queue.job_id(live_event["id"], 1)) is not None


async def test_the_worker_skips_an_event_stored_before_the_setting_changed(conn, db_url, pool, redis):
    await seed_catalogue(conn)
    event = fixtures.load("checkout.session.completed")  # test mode
    await store(conn, event)
    ctx = {
        "settings": make_settings(db_url, stripe={"accepted_modes": "live"}),
        "pool": pool,
        "redis": redis,
        "tally": Tally(),
    }
    assert await consume_event(ctx, event["id"]) == "skipped"
    row = await conn.fetchrow("select status, error from public.stripe_events where id = $1", event["id"])
    assert row["status"] == "skipped" and "accepts live-mode events only" in row["error"]
    assert await conn.fetchval("select count(*) from public.user_purchases") == 0
    # Both (the default): applied as ever.
    other = fixtures.load("payment_intent.succeeded")
    await store(conn, other)
    assert await consume_event({**ctx, "settings": make_settings(db_url)}, other["id"]) == "ok"


def test_an_unknown_mode_stops_start_up(monkeypatch):
    monkeypatch.setenv("AIPT_STRIPE_ACCEPTED_MODES", "sandbox")
    with pytest.raises(settings_mod.ConfigError, match="AIPT_STRIPE_ACCEPTED_MODES"):
        settings_mod.load()


async def test_status_warns_when_both_modes_arrived_and_stays_healthy_for_it(aipt, conn):
    for event in (fixtures.load("invoice.payment_succeeded"), live(fixtures.load("invoice.payment_failed"))):
        await conn.execute(
            "insert into public.stripe_events (id, type, created, livemode, payload, status, processed_at)"
            " values ($1, $2, $3, $4, $5, 'ok', now())",
            event["id"],
            event["type"],
            event["created"],
            event["livemode"],
            json.dumps(event),
        )
    result = await aipt("status", "--json")
    report = json.loads(result.stdout)
    assert report["events"]["modes_last_day"] == {"live": 1, "test": 1}
    assert len(report["warnings"]) == 1 and "both modes" in report["warnings"][0]
    assert not any("mode" in line for line in report["attention"])
