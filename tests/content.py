"""Content and billing rows for soft-delete tests, written as the superuser (committed)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import asyncpg


async def user(conn: asyncpg.Connection, email: str | None = None) -> uuid.UUID:
    return await conn.fetchval(
        # Supabase's auth.users has no default id (GoTrue supplies one): so do we.
        "insert into auth.users (id, email) values (gen_random_uuid(), $1) returning id",
        email or f"{uuid.uuid4().hex[:8]}@example.test",
    )


async def neuron(conn: asyncpg.Connection, slug: str | None = None, tier: int = 0, published: bool = True) -> uuid.UUID:
    slug = slug or f"n-{uuid.uuid4().hex[:8]}"
    return await conn.fetchval(
        "insert into public.neurons (slug, title, required_tier, published, content_full) values ($1, $2, $3, $4, $5)"
        " returning id",
        slug,
        slug.title(),
        tier,
        published,
        f"FULL: the body of {slug}",
    )


async def bundle(conn: asyncpg.Connection, slug: str | None = None, tier: int = 0, neurons=()) -> uuid.UUID:
    slug = slug or f"b-{uuid.uuid4().hex[:8]}"
    bundle_id = await conn.fetchval(
        "insert into public.bundles (slug, title, required_tier) values ($1, $2, $3) returning id",
        slug,
        slug.title(),
        tier,
    )
    for neuron_id in neurons:
        await link(conn, bundle_id, neuron_id)
    return bundle_id


async def link(conn: asyncpg.Connection, bundle_id: uuid.UUID, neuron_id: uuid.UUID) -> None:
    await conn.execute("insert into public.bundle_neurons (bundle_id, neuron_id) values ($1, $2)", bundle_id, neuron_id)


async def subscription(
    conn: asyncpg.Connection,
    tier: int,
    status: str = "active",
    expires_in: dt.timedelta | None = dt.timedelta(days=30),
    ended: bool = False,
) -> str:
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    expires_at = None if expires_in is None else dt.datetime.now(dt.UTC) + expires_in
    await conn.execute(
        """insert into public.user_subscriptions
             (stripe_subscription_id, user_id, plan_tier, status, expires_at, ended_at, last_event_created)
           values ($1, gen_random_uuid(), $2, $3, $4, case when $5 then now() end, 0)""",
        sub_id,
        tier,
        status,
        expires_at,
        ended,
    )
    return sub_id


async def purchase(conn: asyncpg.Connection, neuron_id=None, bundle_id=None) -> None:
    await conn.execute(
        """insert into public.user_purchases (user_id, neuron_id, bundle_id, payment_intent_id, amount, currency)
           values (gen_random_uuid(), $1, $2, $3, 900, 'eur')""",
        neuron_id,
        bundle_id,
        f"pi_{uuid.uuid4().hex[:12]}",
    )


async def backdate(conn: asyncpg.Connection, kind: str, content_id: uuid.UUID, days: int) -> None:
    """Pretend the soft delete happened `days` ago (the superuser owns the table, so the trigger lets it)."""
    await conn.execute(
        f"update public.{kind}s set deleted_at = now() - make_interval(days => $2) where id = $1", content_id, days
    )


async def deleted_at(conn: asyncpg.Connection, kind: str, content_id: uuid.UUID) -> dt.datetime | None:
    return await conn.fetchval(f"select deleted_at from public.{kind}s where id = $1", content_id)


async def live_links(conn: asyncpg.Connection, **where) -> set[tuple[uuid.UUID, uuid.UUID]]:
    ((column, value),) = where.items()
    rows = await conn.fetch(
        f"select bundle_id, neuron_id from public.bundle_neurons where {column} = $1 and deleted_at is null", value
    )
    return {(r["bundle_id"], r["neuron_id"]) for r in rows}


async def inconsistent_links(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Links whose state disagrees with their ends: live with a deleted end, or down with both ends live."""
    return await conn.fetch(
        """select bn.* from public.bundle_neurons bn
           join public.bundles b on b.id = bn.bundle_id
           join public.neurons n on n.id = bn.neuron_id
           where (bn.deleted_at is null) <> (b.deleted_at is null and n.deleted_at is null)"""
    )


async def history(conn: asyncpg.Connection, content_id: uuid.UUID) -> list[dict]:
    """The audit trail of one id, oldest first, with `cascaded` decoded."""
    rows = await conn.fetch("select * from public.content_deletion_log where content_id = $1 order by id", content_id)
    return [{**r, "cascaded": json.loads(r["cascaded"])} for r in rows]
