"""The arq worker end to end: jobs from ingest, the sweeper healing lost enqueues, Redis outages."""

import asyncio
import logging

import httpx
import pytest

from aipt import fixtures, queue
from ingest.app import create_app
from tests.billing import billing_state, seed_catalogue, status, store
from tests.ops import running_worker
from tests.servers import captured_logs, make_settings, post_event, run_worker, sweeping_fresh_rows, through


async def test_ingest_then_worker_applies_the_story(client, conn, settings, redis):
    await seed_catalogue(conn)
    for t in ("payment_intent.succeeded", "checkout.session.completed", "customer.subscription.created"):
        assert (await post_event(client, fixtures.load(t))).status_code == 200
    await client.app.state.doorbell.flush()
    assert await queue.queue_depth(redis) == 3
    await run_worker(settings)
    assert [r["status"] for r in await conn.fetch("select status from public.stripe_events")] == ["ok"] * 3
    state = await billing_state(conn)
    assert len(state["purchases"]) == 1 and len(state["subscriptions"]) == 1
    assert await queue.queue_depth(redis) == 0


async def test_redis_down_at_ingest_is_200_and_the_sweeper_applies_it_later(db_url, conn, redis_proxy):
    await seed_catalogue(conn)
    s = sweeping_fresh_rows(make_settings(db_url, redis_url=through(make_settings(db_url).redis_url, redis_proxy)))
    event = fixtures.load("checkout.session.completed")
    redis_proxy.cut()
    app = create_app(s)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
            r = await post_event(c, event)
            assert r.status_code == 200 and r.json() == {"received": True, "duplicate": False}
            assert (await c.get("/readyz")).json()["redis"].startswith("down")
    assert await status(conn, event["id"]) == "pending"
    redis_proxy.restore()
    await run_worker(s)  # the sweeper runs at start-up and finds the pending row
    assert await status(conn, event["id"]) == "ok"
    assert len((await billing_state(conn))["purchases"]) == 1


@pytest.mark.parametrize("loss", ["flushall", "queue_only"])
async def test_redis_losing_jobs_the_sweeper_still_applies_everything(client, conn, settings, redis, loss):
    await seed_catalogue(conn)
    for t in ("payment_intent.succeeded", "customer.subscription.created"):
        await post_event(client, fixtures.load(t))
    if loss == "flushall":
        await redis.flushdb()
    else:  # the queue is lost but the job keys survive (eviction): they must not block the events
        await redis.delete(settings.queue.name)
    await run_worker(sweeping_fresh_rows(settings))
    assert {r["status"] for r in await conn.fetch("select status from public.stripe_events")} == {"ok"}


async def test_the_sweeper_leaves_fresh_pending_rows_to_their_own_job(client, conn, db_url, redis):
    s = make_settings(db_url, sweeper={"pending_after_seconds": 3600})
    event = fixtures.load("invoice.payment_succeeded")
    await post_event(client, event)
    await redis.delete(make_settings(db_url).queue.name)
    await run_worker(s)
    assert await status(conn, event["id"]) == "pending"


async def test_postgres_down_in_the_worker_loses_nothing_and_heals(db_url, conn, redis, pg_proxy):
    await seed_catalogue(conn)
    s = make_settings(through(db_url, pg_proxy))
    redis.default_queue_name = s.queue.name
    event = fixtures.load("checkout.session.completed")
    await store(conn, event)
    await queue.enqueue_event(redis, event["id"])
    pg_proxy.cut()
    worker = asyncio.create_task(run_worker(s))
    await asyncio.sleep(0.5)  # the job meets a dead database and is deferred, more than once
    assert await status(conn, event["id"]) == "pending"
    pg_proxy.restore()
    await asyncio.wait_for(worker, 30)
    assert await status(conn, event["id"]) == "ok"
    assert len((await billing_state(conn))["purchases"]) == 1


async def test_arq_per_job_lines_give_way_to_our_own(client, conn, settings, caplog):
    """arq's two lines per consume job are dropped; our one line per event says it all; arq's others stay."""
    await seed_catalogue(conn)
    event = fixtures.load("payment_intent.succeeded")
    assert (await post_event(client, event)).status_code == 200
    await client.app.state.doorbell.flush()
    with caplog.at_level(logging.INFO, logger="arq.worker"), captured_logs() as logs:
        await run_worker(settings)
    arq_lines = [r.getMessage() for r in caplog.records if r.name == "arq.worker"]
    assert any(line.startswith("Starting worker") for line in arq_lines)
    assert not any(queue.job_id(event["id"], 1) in line for line in arq_lines)
    ours = [e for e in logs if e.get("event_id") == event["id"]]
    assert [e["event"] for e in ours] == ["event ok"] and ours[0]["duration_ms"] > 0


async def _applied(conn, redis, event: dict) -> None:
    await store(conn, event)
    await queue.enqueue_event(redis, event["id"])
    for _ in range(100):
        if await status(conn, event["id"]) == "ok":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{event['id']} not applied: {await status(conn, event['id'])}")


def _redis_lines(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] in ("redis unavailable; the worker waits for it", "redis available again")]


async def test_redis_down_in_a_running_worker_is_waited_out(db_url, conn, redis, redis_proxy):
    """The worker outlives a Redis outage, says so once, and applies events again when Redis is back."""
    await seed_catalogue(conn)
    s = make_settings(db_url, redis_url=through(make_settings(db_url).redis_url, redis_proxy))
    redis.default_queue_name = s.queue.name
    with captured_logs() as logs:
        async with running_worker(s) as (_, running):
            await _applied(conn, redis, fixtures.load("checkout.session.completed"))
            redis_proxy.cut()
            await asyncio.sleep(2.5)  # polls, heartbeats and crons all meet a dead Redis
            assert not running.done()
            redis_proxy.restore()
            await _applied(conn, redis, fixtures.load("customer.subscription.created"))
            assert not running.done()
    lines = _redis_lines(logs)
    # Said once per outage: down, then up again. (How long it saw Redis down depends on when its polls
    # came, which a loaded machine delays: not asserted.)
    assert [e["event"] for e in lines] == ["redis unavailable; the worker waits for it", "redis available again"]
    assert lines[1]["down_seconds"] > 0


async def test_a_worker_started_while_redis_is_down_waits_for_it(db_url, conn, redis, redis_proxy):
    await seed_catalogue(conn)
    s = make_settings(db_url, redis_url=through(make_settings(db_url).redis_url, redis_proxy))
    redis.default_queue_name = s.queue.name
    redis_proxy.cut()
    with captured_logs() as logs:
        async with running_worker(s) as (_, running):
            await asyncio.sleep(6.5)  # arq's own connect gives up after 5 tries a second apart, ending the process
            assert not running.done()
            assert not any(e["event"] == "worker started" for e in logs)
            redis_proxy.restore()
            await _applied(conn, redis, fixtures.load("payment_intent.succeeded"))
    lines = _redis_lines(logs)
    assert [e["event"] for e in lines] == ["redis unavailable; the worker waits for it", "redis available again"]
