"""POST /webhooks/stripe on the real app, real Postgres and real Redis."""

import asyncio
import json
import time
import uuid

import httpx
import pytest

from aipt import fixtures, queue
from ingest import limit
from ingest.app import create_app
from tests.servers import OTHER_SECRET, captured_logs, make_settings, post_event, sign, through

ALL_FIXTURES = [("current", t) for t in fixtures.types()] + [
    ("legacy", p.stem) for p in sorted(fixtures.LEGACY.glob("*.json"))
]


async def stored(conn) -> list[str]:
    return [r["id"] for r in await conn.fetch("select id from public.stripe_events order by id")]


@pytest.mark.parametrize(("api", "name"), ALL_FIXTURES)
async def test_every_fixture_is_stored_pending_and_enqueued(client, conn, redis, api, name):
    event = fixtures.load(name, api)
    r = await post_event(client, event)
    assert r.status_code == 200 and r.json() == {"received": True, "duplicate": False}
    row = await conn.fetchrow("select * from public.stripe_events where id = $1", event["id"])
    assert row["status"] == "pending" and row["type"] == event["type"]
    assert json.loads(row["payload"]) == event
    await client.app.state.doorbell.flush()  # the doorbell rings off the request path
    assert await redis.zscore(redis.default_queue_name, queue.job_id(event["id"], 1)) is not None


async def test_redelivery_is_acknowledged_as_duplicate(client, conn):
    event = fixtures.load("payment_intent.succeeded")
    first, second = await post_event(client, event), await post_event(client, event)
    assert first.json()["duplicate"] is False and second.json() == {"received": True, "duplicate": True}
    assert await stored(conn) == [event["id"]]


async def test_five_concurrent_deliveries_store_one_row(client, conn):
    event = fixtures.load("checkout.session.completed")
    answers = await asyncio.gather(*(post_event(client, event) for _ in range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    assert sorted(a.json()["duplicate"] for a in answers) == [False, True, True, True, True]
    assert await stored(conn) == [event["id"]]


async def test_a_rotated_secret_is_accepted(client, conn):
    event = fixtures.load("invoice.payment_failed")
    assert (await post_event(client, event, secret=OTHER_SECRET)).status_code == 200
    assert await stored(conn) == [event["id"]]


async def test_unknown_event_types_are_stored_and_acknowledged(client, conn):
    event = fixtures.load("invoice_paid", "legacy")  # invoice.paid: not a type we apply
    assert (await post_event(client, event)).status_code == 200
    assert await stored(conn) == [event["id"]]


BODY = json.dumps(fixtures.load("checkout.session.completed"))


def _with(**fields) -> str:
    event = fixtures.load("checkout.session.completed")
    event.update(fields)
    return json.dumps(event)


LONG_ID = _with(id="evt_" + "x" * 12_000)


def _nested(levels: int):
    value = 1
    for _ in range(levels):
        value = [value]
    return value


DEEP = _with(data={"object": {"id": "cs_1", "metadata": {}, "deep": _nested(70)}})
VERY_DEEP = (
    '{"id": "evt_1", "object": "event", "type": "x", "created": 1, "data": {"object": '
    + "[" * 100_000
    + "]" * 100_000
    + "}}"
)


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (BODY, {}, "missing Stripe-Signature"),
        (BODY, {"Stripe-Signature": "t=1,v1=deadbeef"}, "no valid signature"),
        (BODY, {"Stripe-Signature": sign(BODY, "whsec_unknown")}, "no valid signature"),
        (BODY, {"Stripe-Signature": sign(BODY, timestamp=int(time.time()) - 600)}, "tolerance"),
        (BODY, {"Stripe-Signature": sign(BODY, timestamp=int(time.time()) + 3600)}, "in the future"),
        (LONG_ID, {"Stripe-Signature": sign(LONG_ID)}, "longer than 255 characters"),
        (DEEP, {"Stripe-Signature": sign(DEEP)}, "nests deeper than 64 levels"),
        (VERY_DEEP, {"Stripe-Signature": sign(VERY_DEEP)}, "nests deeper than 64 levels"),
        ("not json", {"Stripe-Signature": sign("not json")}, "not JSON"),
        ('{"a": 1}', {"Stripe-Signature": sign('{"a": 1}')}, "not a Stripe event"),
        (
            json.dumps({"id": "evt_1", "object": "v2.core.event", "type": "x", "related_object": {}}),
            {
                "Stripe-Signature": sign(
                    json.dumps({"id": "evt_1", "object": "v2.core.event", "type": "x", "related_object": {}})
                )
            },
            "thin",
        ),
    ],
)
async def test_bad_requests_get_400_and_store_nothing(client, conn, body, headers, message):
    r = await client.post("/webhooks/stripe", content=body, headers=headers)
    assert r.status_code == 400 and message in r.json()["error"]
    assert await stored(conn) == []


async def test_json_postgres_cannot_hold_is_400_not_503(client, conn):
    event = fixtures.load("payment_intent.succeeded")
    event["data"]["object"]["description"] = "nul \u0000 byte"
    r = await post_event(client, event)
    assert r.status_code == 400 and "cannot be stored" in r.json()["error"]
    assert await stored(conn) == []


async def test_oversized_body_is_413(db_url, conn):
    s = make_settings(db_url, web={"body_limit_bytes": 2048})
    event = fixtures.load("checkout.session.completed")  # about 3 KB
    app = create_app(s)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
            r = await post_event(c, event)
            assert r.status_code == 413 and "2048" in r.json()["error"]
            # Chunked upload without Content-Length is cut off too.
            body = json.dumps(event).encode()

            async def chunks():
                for i in range(0, len(body), 512):
                    yield body[i : i + 512]

            r = await c.post("/webhooks/stripe", content=chunks(), headers={"Stripe-Signature": sign(body.decode())})
            assert r.status_code == 413
    assert await stored(conn) == []


async def test_postgres_down_is_503_then_heals(db_url, conn, pg_proxy):
    s = make_settings(through(db_url, pg_proxy))
    app = create_app(s)
    event = fixtures.load("checkout.session.completed")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
            assert (await post_event(c, fixtures.load("payment_intent.succeeded"))).status_code == 200
            pg_proxy.cut()
            r = await post_event(c, event)
            assert r.status_code == 503 and "retry later" in r.json()["error"]
            ready = await c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["postgres"].startswith("down")
            assert event["id"] not in await stored(conn)
            pg_proxy.restore()
            assert (await post_event(c, event)).status_code == 200
            assert (await c.get("/readyz")).status_code == 200
    assert event["id"] in await stored(conn)


async def test_postgres_down_during_the_limit_check_is_503_then_heals(db_url, conn, pg_proxy):
    """A lease of 1: every webhook checks the bucket, so the outage hits the check, not the insert."""
    app = create_app(make_settings(through(db_url, pg_proxy), ratelimit={"webhook_lease": 1}))
    first, second = copies(2)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
            assert (await post_event(c, first)).status_code == 200
            pg_proxy.cut()
            r = await post_event(c, second)
            assert r.status_code == 503 and "retry later" in r.json()["error"]
            pg_proxy.restore()
            assert (await post_event(c, second)).status_code == 200
    assert await stored(conn) == sorted([first["id"], second["id"]])
    assert (await webhook_bucket(conn))["log"] == [(True, 1), (True, 1)]


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"postgres": "ok", "redis": "ok"}


async def test_past_the_stripe_webhook_limit_is_429_with_retry_after(client, conn):
    await conn.execute(
        "update public.rate_limit_config set burst_size = 2, requests_per_minute = 6 where endpoint_key = 'stripe_webhook'"
    )
    events = [
        fixtures.load(t) for t in ("payment_intent.succeeded", "checkout.session.completed", "invoice.payment_failed")
    ]
    answers = [await post_event(client, e) for e in events]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert int(answers[2].headers["Retry-After"]) in range(1, 11)  # 6/min: a token every 10 s
    assert "rate limited" in answers[2].json()["error"]
    assert await stored(conn) == sorted(e["id"] for e in events[:2])


async def test_the_webhook_limit_can_be_turned_off(db_url, conn):
    await conn.execute("update public.rate_limit_config set burst_size = 1 where endpoint_key = 'stripe_webhook'")
    app = create_app(make_settings(db_url, ratelimit={"webhook_enabled": False}))
    events = [fixtures.load(t) for t in ("payment_intent.succeeded", "checkout.session.completed")]
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
            assert [(await post_event(c, e)).status_code for e in events] == [200, 200]
    assert len(await stored(conn)) == 2


async def test_other_methods_get_405_and_store_nothing(client, conn):
    r = await client.get("/webhooks/stripe")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "POST only" in r.json()["error"]
    assert await stored(conn) == []


async def test_an_unexpected_error_is_500_logged_and_the_app_keeps_serving(client, conn, monkeypatch):
    from ingest import webhook

    real_parse = webhook.parse
    monkeypatch.setattr(webhook, "parse", lambda text: 1 / 0)  # a bug, not bad input
    with captured_logs() as logs:
        r = await post_event(client, fixtures.load("payment_intent.succeeded"))
    assert r.status_code == 500 and r.json() == {"error": "internal error, retry later"}
    assert any(e["event"] == "webhook failed: unexpected error" and e["log_level"] == "error" for e in logs)
    monkeypatch.setattr(webhook, "parse", real_parse)
    event = fixtures.load("checkout.session.completed")
    assert (await post_event(client, event)).status_code == 200  # Stripe's retry then lands
    assert await stored(conn) == [event["id"]]


async def test_a_client_gone_mid_body_stores_nothing_and_gets_no_answer(client, conn):
    body = BODY.encode()
    messages = [
        {"type": "http.request", "body": body[:1000], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks/stripe",
        "headers": [(b"stripe-signature", sign(BODY).encode()), (b"content-length", str(len(body)).encode())],
    }
    await client.app(scope, receive, send)
    assert sent == [] and await stored(conn) == []


def copies(n: int) -> list[dict]:
    """n distinct events (own ids), so none is a redelivery."""
    events = []
    for i in range(n):
        e = fixtures.load("payment_intent.succeeded")
        e["id"] = f"evt_lease_{i:04d}_{uuid.uuid4().hex[:8]}"
        events.append(e)
    return events


async def webhook_bucket(conn) -> dict:
    row = await conn.fetchrow(
        "select tokens_remaining, request_count from public.rate_limit_buckets"
        " where endpoint_key = 'stripe_webhook' and bucket_key = 'service'"
    )
    logged = await conn.fetch(
        "select was_allowed, tokens_consumed from public.rate_limit_log where endpoint_key = 'stripe_webhook'"
        " order by request_timestamp"
    )
    return {"checks": row["request_count"], "tokens": row["tokens_remaining"], "log": [tuple(r) for r in logged]}


async def settled(app) -> None:
    """Let a lease in flight land."""
    if app.state.webhook_limit.check is not None:
        await asyncio.shield(app.state.webhook_limit.check)


async def test_the_webhook_limit_is_taken_in_leases(client, conn):
    """Defaults (1000/min, burst 2000, lease 10): 25 webhooks cost Postgres a few checks, not 25 (leases
    of 10, larger when webhooks had to wait for one), and every token taken is spent or still held.

    The invariants, not the machine's speed: how many checks it takes depends on whether a lease taken
    ahead lands before the last one runs out (3 on an idle machine, 2 to 4 under load), and the bucket
    gains what refilled while the checks ran, by Postgres' clock."""
    burst = await conn.fetchval("select burst_size from public.rate_limit_config where endpoint_key = 'stripe_webhook'")
    for e in copies(25):
        assert (await post_event(client, e)).status_code == 200
    await settled(client.app)
    bucket = await webhook_bucket(conn)
    taken = sum(n for _, n in bucket["log"])
    assert 2 <= bucket["checks"] == len(bucket["log"]) <= 4 and all(ok and n >= 10 for ok, n in bucket["log"])
    assert taken - 25 == client.app.state.webhook_limit.tokens
    # Never more than it held, and never less than what was not taken (refill only adds, up to the burst).
    assert burst - taken <= bucket["tokens"] <= burst


async def test_concurrent_webhooks_share_a_lease(client, conn):
    """40 webhooks at once: the first check takes a lease for all who wait, not one per webhook."""
    answers = await asyncio.gather(*(post_event(client, e) for e in copies(40)))
    assert [a.status_code for a in answers] == [200] * 40
    await settled(client.app)
    bucket = await webhook_bucket(conn)
    taken = sum(n for _, n in bucket["log"])
    assert bucket["checks"] <= 3 and taken - 40 == client.app.state.webhook_limit.tokens


async def test_the_next_lease_is_taken_before_the_tokens_run_out(client, conn):
    """Half a lease left: the next one is taken in the background, so the next webhooks need not wait."""
    for e in copies(6):
        assert (await post_event(client, e)).status_code == 200
    for _ in range(100):  # the background check lands within milliseconds
        if (await webhook_bucket(conn))["checks"] == 2:
            break
        await asyncio.sleep(0.01)
    bucket = await webhook_bucket(conn)
    assert bucket["checks"] == 2 and bucket["log"] == [(True, 10), (True, 10)]
    assert client.app.state.webhook_limit.tokens == 14  # 20 taken, 6 spent


async def test_leases_never_admit_more_than_the_bucket_across_processes(db_url, conn, monkeypatch):
    """Two ingest processes on one bucket of 20 (refill 1/min): exactly 20 webhooks get through."""
    monkeypatch.setattr(limit, "LEASE_SECONDS", 60)  # leftovers stay spendable through the test
    await conn.execute(
        "update public.rate_limit_config set burst_size = 20, requests_per_minute = 1 where endpoint_key = 'stripe_webhook'"
    )
    events = copies(40)
    apps = [create_app(make_settings(db_url)) for _ in range(2)]
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://x") for a in apps]
        codes = [(await post_event(clients[i % 2], e)).status_code for i, e in enumerate(events)]
        for c in clients:
            await c.aclose()
    assert codes.count(200) == 20 and codes.count(429) == 20
    assert len(await stored(conn)) == 20


async def test_leases_shrink_near_an_empty_bucket(client, conn):
    """Burst 5 with a lease of 10: the lease shrinks to what the bucket holds; exactly 5 pass, and only
    refused webhooks are logged as blocked."""
    await conn.execute(
        "update public.rate_limit_config set burst_size = 5, requests_per_minute = 1 where endpoint_key = 'stripe_webhook'"
    )
    codes = [(await post_event(client, e)).status_code for e in copies(8)]
    assert codes == [200] * 5 + [429] * 3
    bucket = await webhook_bucket(conn)
    assert bucket["log"] == [(True, 1), (True, 4), (False, 0), (False, 0), (False, 0)]
