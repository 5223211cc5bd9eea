"""What the shop sells, content_full, goes only to those who paid: the whole matrix, through
f_neuron_content / f_has_neuron_access and through every table and view."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest

from tests import content
from tests.roles import acting_as

TIER = 2


@pytest.fixture
async def shop(conn):
    """A published tier-2 neuron and who holds what around it; a draft; the bundles and links."""
    ids = {
        "neuron": await content.neuron(conn, "sold", tier=TIER),
        "draft": await content.neuron(conn, "draft", published=False),
    }
    ids["bundle"] = await content.bundle(conn, "pack", neurons=[ids["neuron"]])
    ids["unlinked_bundle"] = await content.bundle(conn, "was-pack", neurons=[ids["neuron"]])
    ids["deleted_bundle"] = await content.bundle(conn, "gone-pack", neurons=[ids["neuron"]])
    assert await conn.fetchval("select public.f_soft_delete_bundle($1)", ids["deleted_bundle"])
    # An admin took the neuron out of this bundle after it was bought.
    await conn.execute("delete from public.bundle_neurons where bundle_id = $1", ids["unlinked_bundle"])

    async def user_with(**holds) -> uuid.UUID:
        user = await content.user(conn)
        if "bought" in holds:
            await conn.execute(
                "insert into public.user_purchases (user_id, neuron_id, bundle_id, payment_intent_id) values ($1, $2, $3, $4)",
                user,
                *holds["bought"],
                f"pi_{uuid.uuid4().hex[:12]}",
            )
        if "plan" in holds:
            tier, status, expires_in, ended = holds["plan"]
            await conn.execute(
                """insert into public.user_subscriptions (stripe_subscription_id, user_id, plan_tier, status, expires_at,
                                                         ended_at, last_event_created)
                   values ($1, $2, $3, $4, now() + $5::interval, case when $6 then now() end, 0)""",
                f"sub_{uuid.uuid4().hex[:12]}",
                user,
                tier,
                status,
                expires_in,
                ended,
            )
        return user

    month = dt.timedelta(days=30)
    ids["users"] = {
        "buyer": await user_with(bought=(ids["neuron"], None)),
        "bundle buyer": await user_with(bought=(None, ids["bundle"])),
        "buyer of a bundle it left": await user_with(bought=(None, ids["unlinked_bundle"])),
        "buyer of a deleted bundle": await user_with(bought=(None, ids["deleted_bundle"])),
        "subscriber at the tier": await user_with(plan=(TIER, "active", month, False)),
        "subscriber above the tier": await user_with(plan=(TIER + 1, "active", month, False)),
        "subscriber below the tier": await user_with(plan=(TIER - 1, "active", month, False)),
        "trialing at the tier": await user_with(plan=(TIER, "trialing", month, False)),
        "expired subscriber": await user_with(plan=(TIER, "active", -dt.timedelta(days=1), False)),
        "cancelled subscriber": await user_with(plan=(TIER, "canceled", month, False)),
        "ended subscriber": await user_with(plan=(TIER, "active", month, True)),
        "past-due subscriber": await user_with(plan=(TIER, "past_due", month, False)),
        "nobody special": await user_with(),
    }
    # Whoever holds what, the draft is nobody's but an admin's: even a buyer of it.
    await conn.execute(
        "insert into public.user_purchases (user_id, neuron_id, payment_intent_id) values ($1, $2, 'pi_draft_buyer')",
        ids["users"]["buyer"],
        ids["draft"],
    )
    return ids


ALLOWED = {"buyer", "bundle buyer", "subscriber at the tier", "subscriber above the tier", "trialing at the tier"}


async def access(conn, neuron: uuid.UUID) -> tuple[bool, str]:
    """(f_has_neuron_access, what f_neuron_content gave: the body, or the 42501 message)."""
    has = await conn.fetchval("select public.f_has_neuron_access($1)", neuron)
    try:
        async with conn.transaction():
            return has, await conn.fetchval("select public.f_neuron_content($1)", neuron)
    except asyncpg.InsufficientPrivilegeError as exc:
        return has, f"42501: {exc}"


async def test_the_matrix_through_the_functions(conn, shop):
    body = await conn.fetchval("select content_full from public.neurons where id = $1", shop["neuron"])
    for who, user in shop["users"].items():
        async with acting_as(conn, "authenticated", user):
            has, got = await access(conn, shop["neuron"])
            assert (has, got == body) == ((who in ALLOWED),) * 2, who
            if who not in ALLOWED:
                assert "plan of tier 2 or higher" in got, who
            has, got = await access(conn, shop["draft"])
            assert not has and "not published" in got, who
    async with acting_as(conn, "anon"):
        has, got = await access(conn, shop["neuron"])
        assert not has and "sign in" in got
    for role, claims in (("authenticated", {"user_id": uuid.uuid4(), "admin": True}), ("service_role", {})):
        async with acting_as(conn, role, **claims):
            for neuron in (shop["neuron"], shop["draft"]):
                has, got = await access(conn, neuron)
                assert has and got.startswith("FULL:")
    async with acting_as(conn, "authenticated", shop["users"]["buyer"]):
        has, got = await access(conn, uuid.uuid4())
        assert not has and "no such neuron" in got


async def test_the_matrix_through_every_table_and_view(conn, shop):
    relations = [r[0] for r in await conn.fetch(
        "select c.oid::regclass::text from pg_class c where c.relnamespace = 'public'::regnamespace"
        " and c.relkind in ('r', 'v', 'm', 'p')")]  # fmt: skip
    with_body = [r for r in relations if await conn.fetchval(
        "select count(*) from pg_attribute where attrelid = $1::regclass and attname in ('content_full', 'body')"
        " and not attisdropped", r)]  # fmt: skip
    assert with_body == ["neurons"]
    everyone = [("anon", None), *(("authenticated", u) for u in shop["users"].values())]
    for role, user in everyone:
        async with acting_as(conn, role, user):
            for sql in (
                "select content_full from public.neurons",
                "select * from public.neurons",
                "select n.content_full from public.bundle_neurons bn join public.neurons n on n.id = bn.neuron_id",
            ):
                try:  # anon may not read the table; a signed-in user reads no row of it
                    async with conn.transaction():
                        assert await conn.fetch(sql) == [], (role, sql)
                except asyncpg.InsufficientPrivilegeError:
                    assert role == "anon", sql
            # No view hands out a body, and none shows the draft to anybody but an admin.
            for view in [r for r in relations if r.startswith("v_")]:
                try:
                    async with conn.transaction():
                        rows = await conn.fetch(f"select * from public.{view}")
                except asyncpg.InsufficientPrivilegeError:
                    continue
                assert not any("FULL:" in str(v) for r in rows for v in r.values()), view
                assert not any(v == shop["draft"] for r in rows for v in r.values()), view
            if role == "authenticated":
                assert await conn.fetchval("select count(*) from public.neurons where id = $1", shop["draft"]) == 0
                assert (
                    await conn.fetchval(
                        "select count(*) from public.bundle_neurons where neuron_id = $1", shop["draft"]
                    )
                    == 0
                )
    async with acting_as(conn, "authenticated", uuid.uuid4(), admin=True):
        assert (await conn.fetchval("select content_full from public.neurons where id = $1", shop["draft"])).startswith(
            "FULL:"
        )
