"""The operators' SQL functions (80_operator_actions.sql), as psql and PostgREST callers reach them:
admin-only, refusing what does not fit and changing nothing then, and recording who did what."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from aipt import fixtures
from tests import content
from tests.billing import LEGACY_CUSTOMER, seed_catalogue, store, variant
from tests.roles import acting_as

CALLS = {
    "requeue": "select public.requeue_stripe_event($1)",
    "retry": "select public.retry_stripe_event($1)",
    "discard": "select public.discard_stripe_event($1, 'why')",
    "replay": "select public.replay_stripe_event($1)",
    "reprocess": "select public.reprocess_stripe_event($1)",
    "map": "select public.map_stripe_customer('cus_Someone1', $1::text::uuid)",
    "plan": "select public.add_plan_price('price_' || md5($1), 1)",
}


async def dead(conn) -> str:
    """A legacy subscription event recorded dead (its customer is unknown)."""
    event = variant(fixtures.load("subscription_created", "legacy"))
    await store(conn, event)
    await conn.execute("select public.record_stripe_event_failure($1, 'user not known yet', 'PT001', 1)", event["id"])
    return event["id"]


@pytest.mark.parametrize(
    ("role", "admin", "error"),
    [
        ("anon", False, "permission denied"),
        ("authenticated", False, "only admins"),
    ],
)
@pytest.mark.parametrize("call", sorted(CALLS))
async def test_only_admins_act_on_events(conn, call, role, admin, error):
    event_id = await dead(conn)
    user = await content.user(conn)
    arg = str(user) if call == "map" else event_id
    before = await conn.fetchval("select count(*) from public.stripe_event_actions")
    async with acting_as(conn, role, None if role == "anon" else user, admin):
        with pytest.raises(asyncpg.PostgresError, match=error):
            await conn.fetchval(CALLS[call], arg)
    assert await conn.fetchval("select count(*) from public.stripe_event_actions") == before
    assert await conn.fetchval("select status from public.stripe_events where id = $1", event_id) == "error"


async def test_an_admin_jwt_acts_and_the_record_names_them(conn):
    event_id = await dead(conn)
    admin = await content.user(conn, "admin@shop.test")
    async with acting_as(conn, "authenticated", admin, admin=True):
        await conn.execute(
            "select set_config('request.jwt.claims', $1, true)",
            json.dumps(
                {
                    "role": "authenticated",
                    "sub": str(admin),
                    "email": "admin@shop.test",
                    "app_metadata": {"role": "admin"},
                }
            ),
        )
        assert await conn.fetchval(CALLS["discard"], event_id) == "discarded"
        [row] = await conn.fetch("select action, actor, reason from public.stripe_event_actions")
        assert tuple(row) == ("discard", "admin@shop.test", "why")
    async with acting_as(conn, "authenticated", await content.user(conn)):  # a user reads no record
        assert await conn.fetchval("select count(*) from public.stripe_event_actions") == 0


async def test_the_record_is_append_only_even_for_the_owner(conn):
    event_id = await dead(conn)
    await conn.execute("select public.discard_stripe_event($1, 'test', 'ops')", event_id)
    for statement in (
        "update public.stripe_event_actions set actor = 'someone else'",
        "delete from public.stripe_event_actions",
        "truncate public.stripe_event_actions",
    ):
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute(statement)
    assert await conn.fetchval("select actor from public.stripe_event_actions") == "ops"


async def test_refusals_change_nothing(conn):
    await seed_catalogue(conn)
    event_id = await dead(conn)
    pending = variant(fixtures.load("checkout.session.completed"))
    await store(conn, pending)
    refusals = [
        ("select public.discard_stripe_event($1, '  ')", event_id, "a reason is required"),
        ("select public.retry_stripe_event($1)", event_id, "it is dead"),
        ("select public.replay_stripe_event($1)", event_id, "only an applied or skipped event is replayed"),
        ("select public.requeue_stripe_event($1)", pending["id"], "is not dead"),
        ("select public.replay_stripe_event($1)", pending["id"], "only an applied or skipped event"),
        ("select public.requeue_stripe_event($1)", "evt_nope", "no stripe event evt_nope"),
        ("select public.map_stripe_customer($1, gen_random_uuid())", LEGACY_CUSTOMER, "no user"),
        ("select public.map_stripe_customer($1, gen_random_uuid())", "someone", "is not a Stripe customer id"),
        ("select public.add_plan_price($1, 2)", "price_1PgafmB7WZ01zgkW6dKueIc5", "is mapped already"),
        ("select public.add_plan_price($1, -1)", "price_new", "tier must be 0 or more"),
        ("select public.add_plan_price($1, 1)", "not-a-price", "is not a Stripe price id"),
    ]
    snapshot = (
        "select (select jsonb_agg(e order by e.id) from public.stripe_events e)::text, "
        "(select jsonb_agg(f order by f.id) from public.webhook_failures f)::text, "
        "(select count(*) from public.stripe_customers), (select count(*) from public.plans), "
        "(select count(*) from public.stripe_event_actions)"
    )
    before = await conn.fetchrow(snapshot)
    for sql, arg, message in refusals:
        with pytest.raises(asyncpg.PostgresError, match=message):
            await conn.fetchval(sql, arg)
    assert await conn.fetchrow(snapshot) == before


async def test_mapping_a_customer_is_refused_over_another_user_unless_replaced(conn):
    first, second = await content.user(conn), await content.user(conn)
    assert await conn.fetchval("select public.map_stripe_customer($1, $2)", LEGACY_CUSTOMER, first) == "mapped"
    assert await conn.fetchval("select public.map_stripe_customer($1, $2)", LEGACY_CUSTOMER, first) == "unchanged"
    with pytest.raises(asyncpg.PostgresError, match=f"is mapped to user {first} already"):
        await conn.fetchval("select public.map_stripe_customer($1, $2)", LEGACY_CUSTOMER, second)
    assert await conn.fetchval("select public.map_stripe_customer($1, $2, true)", LEGACY_CUSTOMER, second) == "replaced"
    assert (
        await conn.fetchval("select user_id from public.stripe_customers where customer_id = $1", LEGACY_CUSTOMER)
        == second
    )
    actions = await conn.fetch(
        "select action, detail from public.stripe_event_actions where event_id = $1 order by id", LEGACY_CUSTOMER
    )
    assert [(a["action"], json.loads(a["detail"])["was"]) for a in actions] == [
        ("map_customer", None),
        ("map_customer", str(first)),
    ]


async def test_the_state_names_every_event_the_same_way_in_sql(conn):
    assert await conn.fetchval("""
        select array_agg(public.stripe_event_state(s, r, d) order by n)
        from (values (1, 'pending', null::timestamptz, null::timestamptz), (2, 'ok', null, null),
                     (3, 'skipped', null, null), (4, 'error', now(), null), (5, 'error', null, null),
                     (6, 'skipped', null, now())) v(n, s, r, d)""") == [
        "pending",
        "ok",
        "skipped",
        "retrying",
        "dead",
        "discarded",
    ]
    from aipt import operations
    from aipt.cli import events

    assert operations.STATES == events.STATES  # the CLI's --status choices, written out for a fast --help


def test_the_cli_names_the_cleanup_jobs_the_settings_run():
    from aipt.cli import ops
    from aipt.settings import CLEANUP_JOBS

    assert ops.CLEANUP_JOBS == CLEANUP_JOBS


async def test_a_plan_price_is_a_new_plan_row_here(conn):
    plan = await conn.fetchval("select public.add_plan_price('price_NewTier2', 2, 'Pro yearly')")
    row = await conn.fetchrow("select name, tier, stripe_price_id from public.plans where id = $1", plan)
    assert tuple(row) == ("Pro yearly", 2, "price_NewTier2")
    assert await conn.fetchval("select tier from public.stripe_plan_for_price('price_NewTier2')") == 2
    assert isinstance(plan, uuid.UUID)
