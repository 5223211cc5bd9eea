"""Applying events: every type in both API shapes, idempotency at three levels, ordering, user resolution."""

import asyncio
import itertools
import random

import pytest

from aipt import fixtures
from aipt.queue import Tally
from tests.billing import LEGACY_CUSTOMER, USER, billing_state, seed_catalogue, status, store, variant
from worker.consume import consume_event

STORY = [  # the current-api fixtures in the order Stripe created them
    "payment_intent.succeeded",
    "checkout.session.completed",
    "customer.subscription.created",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "customer.subscription.updated",
    "customer.subscription.deleted",
]


@pytest.fixture
async def ctx(settings, pool, redis, conn):
    await seed_catalogue(conn)
    return {"settings": settings, "pool": pool, "redis": redis, "tally": Tally()}


async def apply(ctx, conn, events) -> list[str]:
    outcomes = []
    for event in events:
        await store(conn, event)
        outcomes.append(await consume_event(ctx, event["id"]))
    return outcomes


async def test_the_current_api_story_ends_in_the_right_rows(ctx, conn):
    assert await apply(ctx, conn, [fixtures.load(t) for t in STORY]) == ["ok"] * 7
    state = await billing_state(conn)
    assert state["purchases"] == [
        {
            "user_id": USER,
            "neuron_id": "17ea841a-9ee1-4f9e-87e6-a1f2dbc1edd3",
            "bundle_id": None,
            "payment_intent_id": "pi_1PgafyB7WZ01zgkWSjxsAJo3",
            "checkout_session_id": "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY",
            "amount": 1099,
            "currency": "usd",
        }
    ]
    [sub] = state["subscriptions"]
    assert (sub["stripe_subscription_id"], sub["user_id"], sub["plan_tier"], sub["status"], sub["ended"]) == (
        "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
        USER,
        1,
        "canceled",
        True,
    )
    assert sub["last_event_created"] == 1791895201
    assert [
        (i["id"], i["subscription_id"], i["payment_intent_id"], i["status"], i["amount_paid"])
        for i in state["invoices"]
    ] == [
        ("in_1Pgc6tB7WZ01zgkWu9fdqL6I", "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw", "pi_3orXHiB7WZ01zgkW03DuKuUU", "paid", 2000),
        ("in_1wnSrRB7WZ01zgkWcWVgANa8", "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw", "pi_3pDK4KB7WZ01zgkW14PJNF92", "open", 0),
    ]
    assert state["customers"] == [{"customer_id": "cus_QXg1o8vcGmoR32", "user_id": USER}]


async def test_subscription_gives_access_while_active_and_not_after_deletion(ctx, conn):
    created = fixtures.load("customer.subscription.created")
    far = 4_000_000_000
    created["data"]["object"]["items"]["data"][0]["current_period_end"] = far
    await apply(ctx, conn, [created])
    assert await conn.fetchval("select public.user_access_tier($1)", USER) == 1
    await apply(ctx, conn, [fixtures.load("customer.subscription.deleted")])
    assert await conn.fetchval("select public.user_access_tier($1)", USER) is None


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_any_delivery_order_ends_in_the_same_state(ctx, conn, db_url, seed):
    in_order = [fixtures.load(t) for t in STORY]
    await apply(ctx, conn, in_order)
    expected = await billing_state(conn)
    await conn.execute(
        "truncate public.user_purchases, public.user_subscriptions, public.invoices, public.stripe_customers, public.stripe_events cascade"
    )
    shuffled = in_order[::-1] if seed == 1 else random.Random(seed).sample(in_order, len(in_order))
    await apply(ctx, conn, shuffled)
    assert await billing_state(conn) == expected


async def test_equal_created_deleted_wins_in_either_order(ctx, conn):
    deleted = fixtures.load("customer.subscription.deleted")
    updated = variant(fixtures.load("customer.subscription.updated"), created=deleted["created"], status="active")
    for pair in ([updated, deleted], [variant(deleted), variant(updated)]):
        await conn.execute("delete from public.user_subscriptions")
        await apply(ctx, conn, pair)
        assert await conn.fetchval("select status from public.user_subscriptions") == "canceled"


async def test_a_deleted_subscription_is_never_resurrected(ctx, conn):
    deleted = fixtures.load("customer.subscription.deleted")
    later = variant(fixtures.load("customer.subscription.updated"), created=deleted["created"] + 10, status="active")
    recreated = variant(fixtures.load("customer.subscription.created"), created=deleted["created"] + 20)
    assert await apply(ctx, conn, [deleted, later, recreated]) == ["ok", "ok", "ok"]
    row = await conn.fetchrow("select status, ended_at, last_event_created from public.user_subscriptions")
    assert (
        row["status"] == "canceled" and row["ended_at"] is not None and row["last_event_created"] == deleted["created"]
    )


async def test_an_older_update_never_overwrites_a_newer_one(ctx, conn):
    newer = fixtures.load("customer.subscription.updated")  # past_due
    older = variant(newer, created=newer["created"] - 5, status="active", cancel_at_period_end=True)
    await apply(ctx, conn, [newer, older])
    row = await conn.fetchrow("select status, cancel_at_period_end from public.user_subscriptions")
    assert (row["status"], row["cancel_at_period_end"]) == ("past_due", False)


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["checkout.session.completed", "payment_intent.succeeded"]))
)
async def test_checkout_and_its_payment_intent_make_one_purchase(ctx, conn, order):
    await apply(ctx, conn, [fixtures.load(t) for t in order])
    [purchase] = (await billing_state(conn))["purchases"]
    assert purchase["checkout_session_id"] and purchase["payment_intent_id"] == "pi_1PgafyB7WZ01zgkWSjxsAJo3"
    assert purchase["amount"] == 1099


async def test_the_same_payment_in_two_events_is_one_purchase(ctx, conn):
    first = fixtures.load("payment_intent.succeeded")
    await apply(ctx, conn, [first, variant(first)])  # e.g. an event re-sent by Stripe with a new id
    assert len((await billing_state(conn))["purchases"]) == 1


async def test_one_event_consumed_five_times_concurrently_applies_once(ctx, conn):
    event = fixtures.load("checkout.session.completed")
    await store(conn, event)
    outcomes = await asyncio.gather(*(consume_event(ctx, event["id"]) for _ in range(5)))
    assert outcomes.count("ok") == 1 and set(outcomes) <= {"ok", "duplicate", "not_due"}
    assert len((await billing_state(conn))["purchases"]) == 1


async def test_legacy_shapes(ctx, conn):
    await conn.execute(
        "insert into public.stripe_customers (customer_id, user_id) values ($1, $2)", LEGACY_CUSTOMER, USER
    )
    neuron = "17ea841a-9ee1-4f9e-87e6-a1f2dbc1edd3"
    checkout = fixtures.load("checkout_session_completed", "legacy")
    checkout["data"]["object"]["metadata"] = {"neuron_id": neuron}
    events = [checkout] + [
        fixtures.load(n, "legacy")
        for n in (
            "payment_intent_succeeded",
            "subscription_updated",
            "subscription_created",
            "subscription_deleted",
            "event_invoice_payment_succeeded",
            "event_invoice_payment_failed",
            "invoice_paid",
        )
    ]
    assert await apply(ctx, conn, events) == ["ok"] * 7 + ["skipped"]
    state = await billing_state(conn)
    assert [(p["payment_intent_id"], p["amount"], p["currency"], p["user_id"]) for p in state["purchases"]] == [
        ("pi_1IqxJOJDPojXS6LN9uOebAea", 999, "eur", USER)
    ]
    assert [(s["stripe_subscription_id"], s["status"], s["plan_tier"], s["ended"]) for s in state["subscriptions"]] == [
        ("sub_JLEPMp81LApOJl", "active", 2, False),
        ("sub_JdIzvfy6o5GZRd", "canceled", 2, True),
    ]
    assert [(i["id"], i["subscription_id"], i["payment_intent_id"]) for i in state["invoices"]] == [
        ("in_00000000000000", "sub_00000000000000", "pi_00000000000000"),
        ("in_1GQL9sBVqmGyQTMaEl7Oczgm", "sub_GyHjvuW3xOeaZS", "pi_1GQL9sBVqmGyQTMaSnFPZJlx"),
    ]


async def test_a_checkout_naming_no_product_goes_dead_at_once(ctx, conn):
    await conn.execute(
        "insert into public.stripe_customers (customer_id, user_id) values ($1, $2)", LEGACY_CUSTOMER, USER
    )
    event = fixtures.load("checkout_session_completed", "legacy")  # metadata {}: nothing says what was bought
    assert await apply(ctx, conn, [event]) == ["dead"]
    f = await conn.fetchrow("select * from public.webhook_failures where event_id = $1", event["id"])
    assert (f["failure_count"], f["permanent"], f["next_retry"], f["error_code"]) == (1, True, None, "PT002")
    assert "names no neuron_id or bundle_id" in f["error_message"]
    assert await conn.fetchval("select count(*) from public.user_purchases") == 0


async def test_unknown_user_fails_then_succeeds_once_the_checkout_teaches_the_customer(ctx, conn):
    sub = fixtures.load("subscription_created", "legacy")  # names only the customer
    assert await apply(ctx, conn, [sub]) == ["retry"]
    assert await status(conn, sub["id"]) == "error"
    f = await conn.fetchrow("select failure_count, next_retry, error_code from public.webhook_failures")
    assert (f["failure_count"], f["error_code"]) == (1, "PT001") and f["next_retry"] is not None

    checkout = variant(fixtures.load("checkout.session.completed"), customer=LEGACY_CUSTOMER)
    await apply(ctx, conn, [checkout])
    await conn.execute("update public.webhook_failures set next_retry = now()")  # the retry is due
    assert await consume_event(ctx, sub["id"]) == "ok"
    assert await status(conn, sub["id"]) == "ok"
    assert await conn.fetchval("select user_id::text from public.user_subscriptions") == USER


async def test_an_event_not_due_is_left_alone(ctx, conn):
    sub = fixtures.load("subscription_created", "legacy")
    await apply(ctx, conn, [sub])  # fails: retry scheduled in the future
    await conn.execute("update public.webhook_failures set next_retry = now() + interval '1 hour'")
    assert await consume_event(ctx, sub["id"]) == "not_due"
    assert await conn.fetchval("select failure_count from public.webhook_failures") == 1


async def test_a_known_subscription_keeps_its_user_when_the_event_names_none(ctx, conn):
    created = fixtures.load("customer.subscription.created")  # metadata.user_id present
    deleted = fixtures.load("customer.subscription.deleted")
    deleted["data"]["object"]["metadata"] = {}
    deleted["data"]["object"]["customer"] = "cus_never_seen"
    assert await apply(ctx, conn, [created, deleted]) == ["ok", "ok"]
    row = await conn.fetchrow("select user_id::text, status from public.user_subscriptions")
    assert (row["user_id"], row["status"]) == (USER, "canceled")


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"neuron_id": "not-a-uuid"}, "is not a uuid"),
        ({"neuron_id": "00000000-0000-4000-8000-000000000000"}, "unknown neuron"),
        ({"bundle_id": "00000000-0000-4000-8000-000000000000"}, "unknown bundle"),
        (
            {"neuron_id": "17ea841a-9ee1-4f9e-87e6-a1f2dbc1edd3", "bundle_id": "00000000-0000-4000-8000-000000000000"},
            "both",
        ),
    ],
)
async def test_a_purchase_naming_a_bad_product_goes_dead_at_once(ctx, conn, metadata, error):
    event = fixtures.load("payment_intent.succeeded")
    event["data"]["object"]["metadata"] = {"user_id": USER, **metadata}
    assert await apply(ctx, conn, [event]) == ["dead"]
    assert error in await conn.fetchval("select error_message from public.webhook_failures")


@pytest.mark.parametrize("metadata", [
    {"userId": USER, "neuron_id": "17ea841a-9ee1-4f9e-87e6-a1f2dbc1edd3"},  # the web app's checkout route
    {"uid": USER, "kind": "neuron", "neuron_id": "17ea841a-9ee1-4f9e-87e6-a1f2dbc1edd3"},  # the deployed 18
])  # fmt: skip
async def test_the_deployed_conventions_name_the_buyer(ctx, conn, metadata):
    event = fixtures.load("checkout.session.completed")
    session = event["data"]["object"]
    session.pop("client_reference_id", None)
    session["metadata"] = metadata
    assert await apply(ctx, conn, [event]) == ["ok"]
    assert str(await conn.fetchval("select user_id from public.user_purchases")) == USER


async def test_metadata_kind_must_agree_with_the_product(ctx, conn):
    event = fixtures.load("checkout.session.completed")
    event["data"]["object"]["metadata"] = {
        "uid": USER,
        "kind": "bundle",
        "neuron_id": "17ea841a-9ee1-4f9e-87e6-a1f2dbc1edd3",
    }
    assert await apply(ctx, conn, [event]) == ["dead"]
    assert "metadata.kind is bundle" in await conn.fetchval("select error_message from public.webhook_failures")
