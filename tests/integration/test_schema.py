"""The schema documents itself: every function in public says what it is for (admins read `\\df+`)."""

from __future__ import annotations


async def test_every_function_in_public_has_a_comment(conn):
    undocumented = await conn.fetch(
        """select p.oid::regprocedure::text as name
           from pg_catalog.pg_proc p
           join pg_catalog.pg_namespace n on n.oid = p.pronamespace
           left join pg_catalog.pg_depend d on d.objid = p.oid and d.deptype = 'e'
           where n.nspname = 'public' and d.objid is null  -- not an extension's
             and pg_catalog.obj_description(p.oid, 'pg_proc') is null
           order by 1"""
    )
    assert [r["name"] for r in undocumented] == []
    assert (
        await conn.fetchval(
            "select count(*) from pg_catalog.pg_proc p join pg_catalog.pg_namespace n "
            "on n.oid = p.pronamespace where n.nspname = 'public'"
        )
        > 50
    )
