"""Failures: retries with backoff in Postgres, death, alerts, operator requeue and reprocess."""

import asyncio
import datetime as dt
import json

import asyncpg
import pytest

from aipt import fixtures, operations, queue
from tests.billing import LEGACY_CUSTOMER, USER, seed_catalogue, status, store
from tests.receiver import Receiver
from tests.roles import acting_as
from tests.servers import captured_logs, make_settings, run_worker

SUB = "subscription_created"  # legacy: names only its customer, so it fails while the customer is unknown


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.close()


async def stored_enqueued(conn, redis, event):
    await store(conn, event)
    await queue.enqueue_event(redis, event["id"])


async def failure(conn, event_id):
    row = await conn.fetchrow("select * from public.webhook_failures where event_id = $1", event_id)
    return None if row is None else {**dict(row), "history": json.loads(row["history"])}


def gaps(history):
    times = [dt.datetime.fromisoformat(h["at"]) for h in history]
    return [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]


async def test_transient_failures_retry_with_backoff_then_succeed(conn, db_url, redis):
    await seed_catalogue(conn)
    s = make_settings(db_url, retry={"attempts": 3, "base_seconds": 0.3, "factor": 2, "cap_seconds": 10})
    redis.default_queue_name = s.queue.name
    event = fixtures.load(SUB, "legacy")
    await stored_enqueued(conn, redis, event)

    async def learn_customer_after_two_failures():
        while (f := await failure(conn, event["id"])) is None or f["failure_count"] < 2:
            await asyncio.sleep(0.02)
        await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)

    teacher = asyncio.create_task(learn_customer_after_two_failures())
    await run_worker(s)
    await teacher
    assert await status(conn, event["id"]) == "ok"
    f = await failure(conn, event["id"])
    assert f["failure_count"] == 2 and f["resolved_at"] is not None and f["next_retry"] is None
    assert [h["code"] for h in f["history"]] == ["PT001", "PT001"]
    # attempt 1 → 2 waits base (0.3 s), 2 → 3 waits base·factor (0.6 s), each with jitter in [½, 1]
    [first_gap] = gaps(f["history"])
    assert 0.15 <= first_gap < 5
    assert await conn.fetchval("select count(*) from public.user_subscriptions") == 1


async def test_exhausted_retries_go_dead_and_alert_once(conn, db_url, redis, receiver):
    await seed_catalogue(conn)
    s = make_settings(db_url, alert_webhook_url=receiver.url, retry={"attempts": 3, "base_seconds": 0.05})
    redis.default_queue_name = s.queue.name
    event = fixtures.load(SUB, "legacy")
    await stored_enqueued(conn, redis, event)
    await run_worker(s)
    f = await failure(conn, event["id"])
    assert (f["failure_count"], f["next_retry"], f["permanent"]) == (3, None, False)
    assert f["dead_at"] is not None and f["alerted_at"] is not None
    assert await status(conn, event["id"]) == "error"
    [alert] = receiver.bodies
    assert event["id"] in alert["text"] and "customer.subscription.created" in alert["text"]
    assert "3 attempt(s)" in alert["text"] and "user not known yet" in alert["text"]
    # Another run, e.g. the sweeper or a stray job, neither retries nor announces it again.
    await queue.enqueue_event(redis, event["id"], 4)
    await run_worker(s)
    assert (await failure(conn, event["id"]))["failure_count"] == 3 and len(receiver.bodies) == 1


async def test_a_permanent_error_goes_dead_on_the_first_attempt(conn, db_url, redis, receiver):
    await seed_catalogue(conn)
    s = make_settings(db_url, alert_webhook_url=receiver.url)
    redis.default_queue_name = s.queue.name
    event = fixtures.load("customer.subscription.created")
    event["data"]["object"]["items"]["data"][0]["price"]["id"] = "price_nobody_sells"
    await stored_enqueued(conn, redis, event)
    await run_worker(s)
    f = await failure(conn, event["id"])
    assert (f["failure_count"], f["permanent"], f["error_code"]) == (1, True, "PT002")
    assert "unknown price price_nobody_sells" in f["error_message"]
    assert len(receiver.bodies) == 1


async def test_the_dead_count_crossing_its_threshold_alerts_once(conn, db_url, redis, receiver):
    await seed_catalogue(conn)
    s = make_settings(db_url, alert_webhook_url=receiver.url, retry={"attempts": 1}, alerts={"dead_threshold": 2})
    redis.default_queue_name = s.queue.name
    base = fixtures.load(SUB, "legacy")
    for n in range(3):
        await stored_enqueued(conn, redis, {**base, "id": f"evt_dead_{n}"})
    await run_worker(s)
    texts = [b["text"] for b in receiver.bodies]
    assert sum("is dead after" in t for t in texts) == 3
    assert [t for t in texts if "Stripe events are dead" in t] == [
        ":warning: 2 Stripe events are dead. See `aipt dlq list`."
    ]


async def test_an_alert_receiver_that_is_down_does_not_stop_processing(conn, db_url, redis):
    await seed_catalogue(conn)
    s = make_settings(
        db_url, alert_webhook_url="http://127.0.0.1:9/alert", retry={"attempts": 1}, alerts={"timeout_seconds": 0.5}
    )
    redis.default_queue_name = s.queue.name
    dead, fine = fixtures.load(SUB, "legacy"), fixtures.load("checkout.session.completed")
    await stored_enqueued(conn, redis, dead)
    await stored_enqueued(conn, redis, fine)
    with captured_logs() as logs:
        await run_worker(s)
    assert await status(conn, fine["id"]) == "ok"
    assert (await failure(conn, dead["id"]))["dead_at"] is not None
    [undelivered] = [e for e in logs if e["event"] == "alert not delivered"]
    assert dead["id"] in undelivered["alert"] and undelivered["level"] == "error"
    assert any(e["event"] == "event dead: no more automatic attempts" and e["event_id"] == dead["id"] for e in logs)


async def test_a_retry_survives_redis_losing_its_deferred_job(conn, db_url, redis):
    await seed_catalogue(conn)
    s = make_settings(db_url, retry={"attempts": 3, "base_seconds": 3600, "cap_seconds": 7200})  # retry far away
    redis.default_queue_name = s.queue.name
    event = fixtures.load(SUB, "legacy")
    await stored_enqueued(conn, redis, event)
    await run_worker(s, max_burst_jobs=2)  # the start-up sweep and the consume job, then stop
    assert (await failure(conn, event["id"]))["failure_count"] == 1
    assert await redis.zscore(s.queue.name, queue.job_id(event["id"], 2)) is not None  # the deferred retry
    await redis.flushdb()
    await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)
    await conn.execute("update public.webhook_failures set next_retry = now()")  # its time has come
    await run_worker(s)  # the start-up sweep finds the due retry in Postgres
    assert await status(conn, event["id"]) == "ok"


async def test_a_retry_started_early_waits_for_its_time(conn, db_url, redis):
    """A retry's job that starts before its next_retry by Postgres' clock (arq rounds to the millisecond;
    Postgres may run on another host) is deferred by what is left, not dropped until the next sweep.
    A stale job for an earlier attempt is still just "not due"."""
    await seed_catalogue(conn)
    s = make_settings(db_url, retry={"attempts": 3, "base_seconds": 3600, "cap_seconds": 7200})
    redis.default_queue_name = s.queue.name
    event = fixtures.load(SUB, "legacy")
    await stored_enqueued(conn, redis, event)
    await run_worker(s, max_burst_jobs=2)  # the start-up sweep and the first attempt, which fails
    await redis.flushdb()  # its retry, an hour away, is replaced by one due now by the worker's clock
    await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)
    next_retry = await conn.fetchval(
        "update public.webhook_failures set next_retry = now() + interval '300 milliseconds' returning next_retry"
    )
    await queue.enqueue_event(redis, event["id"], 1)
    await queue.enqueue_event(redis, event["id"], 2)
    with captured_logs() as logs:
        await run_worker(s)
    assert await status(conn, event["id"]) == "ok"
    assert await conn.fetchval("select processed_at from public.stripe_events where id = $1", event["id"]) >= next_retry
    lines = sorted((e["attempt"], e["event"]) for e in logs if e.get("event_id") == event["id"])
    assert lines == [
        (1, "event not due (done, dead, or its retry is later)"),
        (2, "event ok"),
        (2, "retry started early; deferred to its time"),
    ]
    [early] = [e for e in logs if e["event"] == "retry started early; deferred to its time"]
    assert 0 < early["retry_in_ms"] <= 300


async def make_dead(conn, db_url, redis) -> tuple[dict, object]:
    await seed_catalogue(conn)
    s = make_settings(db_url, retry={"attempts": 2, "base_seconds": 0.01})
    redis.default_queue_name = s.queue.name
    event = fixtures.load(SUB, "legacy")
    await stored_enqueued(conn, redis, event)
    await run_worker(s)
    assert (await failure(conn, event["id"]))["dead_at"] is not None
    return event, s


async def test_requeue_of_a_fixed_dead_event_ends_ok_with_history_kept(conn, db_url, redis):
    event, s = await make_dead(conn, db_url, redis)
    await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)
    assert await operations.requeue(conn, redis, event["id"], "test") == 3
    await run_worker(s)
    assert await status(conn, event["id"]) == "ok"
    f = await failure(conn, event["id"])
    assert f["failure_count"] == 2 and len(f["history"]) == 2 and f["resolved_at"] is not None


async def test_requeue_of_a_still_broken_event_gives_exactly_one_more_attempt(conn, db_url, redis):
    event, s = await make_dead(conn, db_url, redis)
    await operations.requeue(conn, redis, event["id"], "test")
    await run_worker(s)
    f = await failure(conn, event["id"])
    assert (f["failure_count"], f["next_retry"]) == (3, None) and f["dead_at"] is not None
    assert [h["attempt"] for h in f["history"]] == [1, 2, 3]


async def test_two_concurrent_requeues_apply_it_once(conn, db_url, redis, pool):
    event, s = await make_dead(conn, db_url, redis)
    await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)

    async def one():
        async with pool.acquire() as c:
            try:
                return await operations.requeue(c, redis, event["id"], "test")
            except operations.OperationError as exc:
                return str(exc)

    results = await asyncio.gather(one(), one())
    assert 3 in results and any(isinstance(r, str) and "is not dead" in r for r in results)
    await run_worker(s)
    assert await status(conn, event["id"]) == "ok"
    assert await conn.fetchval("select count(*) from public.user_subscriptions") == 1


async def test_requeue_refuses_what_is_not_dead_and_changes_nothing(conn, redis):
    await seed_catalogue(conn)
    event = fixtures.load("checkout.session.completed")
    await store(conn, event)
    with pytest.raises(operations.OperationError, match="is not dead"):
        await operations.requeue(conn, redis, event["id"], "test")
    with pytest.raises(operations.OperationError, match="no stripe event evt_nope"):
        await operations.requeue(conn, redis, "evt_nope", "test")
    assert await status(conn, event["id"]) == "pending"
    assert await conn.fetchval("select count(*) from public.webhook_failures") == 0


async def test_reprocess_from_psql(conn, db_url, redis):
    event, _ = await make_dead(conn, db_url, redis)
    assert await conn.fetchval("select public.reprocess_stripe_event(p_id => $1)", event["id"]) is False
    assert (await conn.fetchval("select error from public.stripe_events where id = $1", event["id"])).startswith(
        "user not known yet"
    )
    f = await failure(conn, event["id"])
    assert (f["failure_count"], f["next_retry"]) == (3, None)
    await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)
    assert await conn.fetchval("select public.reprocess_stripe_event($1)", event["id"]) is True
    assert await conn.fetchval("select public.reprocess_stripe_event($1)", event["id"]) is False  # done already
    assert await status(conn, event["id"]) == "ok"
    assert await conn.fetchval("select error from public.stripe_events where id = $1", event["id"]) is None
    with pytest.raises(asyncpg.PostgresError, match="no stripe event"):
        await conn.fetchval("select public.reprocess_stripe_event('evt_nope')")


@pytest.mark.parametrize(
    ("role", "user", "admin", "error"),
    [
        ("anon", None, False, "permission denied"),
        ("authenticated", USER, False, "only admins"),
    ],
)
async def test_requeue_and_reprocess_are_admin_only(conn, db_url, redis, role, user, admin, error):
    event, _ = await make_dead(conn, db_url, redis)
    for fn in ("requeue_stripe_event", "reprocess_stripe_event"):
        async with acting_as(conn, role, user, admin):
            with pytest.raises(asyncpg.PostgresError, match=error):
                await conn.fetchval(f"select public.{fn}($1)", event["id"])
    async with acting_as(conn, "authenticated", USER, admin=True):
        assert await conn.fetchval("select public.requeue_stripe_event($1)", event["id"]) == 3
    async with acting_as(conn, "authenticated", USER):  # a user sees no event rows at all
        assert await conn.fetchval("select count(*) from public.stripe_events") == 0
        assert await conn.fetchval("select count(*) from public.webhook_failures") == 0


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        ("PT002", True),
        ("22P02", True),
        ("23505", True),
        ("42883", True),
        ("PT001", False),
        ("40P01", False),
        ("57014", False),
        ("KeyError", False),
        (None, False),
    ],
)
async def test_which_errors_are_permanent(conn, code, permanent):
    assert await conn.fetchval("select public.stripe_error_is_permanent($1)", code) is permanent
