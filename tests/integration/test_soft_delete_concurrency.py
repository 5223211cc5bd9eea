"""Soft delete and restore racing each other on separate connections (schema/23_neuron_delete_guard.sql)."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg

from tests import content
from tests.roles import claims_for

ADMIN_ID = uuid.UUID(int=0xAD)


async def as_admin(pool, sql, *args):
    """One call on its own connection, committed, as an admin user makes it through PostgREST."""
    async with pool.acquire() as c:
        try:
            async with c.transaction():
                await c.execute("set local role authenticated")
                claims = json.dumps(claims_for("authenticated", ADMIN_ID, admin=True))
                await c.execute("select set_config('request.jwt.claims', $1, true)", claims)
                return await c.fetchval(sql, *args)
        except asyncpg.ObjectInUseError:
            return "refused"


async def test_concurrent_soft_delete_and_restore_of_one_row_stay_consistent(conn, pool):
    await conn.execute("insert into auth.users (id) values ($1)", ADMIN_ID)
    neurons = [await content.neuron(conn) for _ in range(3)]
    b = await content.bundle(conn, neurons=neurons)
    for _ in range(15):
        results = await asyncio.gather(
            as_admin(pool, "select public.f_soft_delete_bundle($1)", b),
            as_admin(pool, "select public.f_restore_bundle($1)", b),
        )
        deleted = await content.deleted_at(conn, "bundle", b) is not None
        # Serialised, so exactly one order happened: delete then restore (both true, live) or restore
        # (nothing to do) then delete (deleted).
        assert results in ([True, True], [True, False])
        assert deleted == (results == [True, False])
        assert await content.inconsistent_links(conn) == []
        if deleted:
            assert await conn.fetchval("select public.f_restore_bundle($1)", b)
    actions = [e["action"] for e in await content.history(conn, b)]
    assert actions == ["soft_delete", "restore"] * (len(actions) // 2)


async def test_concurrent_bundle_restore_and_neuron_delete_never_leave_a_live_link_to_deleted_content(conn, pool):
    await conn.execute("insert into auth.users (id) values ($1)", ADMIN_ID)
    for _ in range(10):
        n = await content.neuron(conn)
        b = await content.bundle(conn, neurons=[n])
        assert await conn.fetchval("select public.f_soft_delete_bundle($1)", b)
        restored, neuron_deleted = await asyncio.gather(
            as_admin(pool, "select public.f_restore_bundle($1)", b),
            as_admin(pool, "select public.f_soft_delete_neuron($1)", n),
        )
        assert restored is True
        # Either the neuron went first (and the bundle came back without it) or the bundle came
        # back first (and the guard then refused the neuron).
        assert neuron_deleted in (True, "refused")
        assert await content.live_links(conn, bundle_id=b) == (set() if neuron_deleted is True else {(b, n)})
        assert await content.inconsistent_links(conn) == []
