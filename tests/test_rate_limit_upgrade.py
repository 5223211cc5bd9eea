"""Upgrade in place: a database where the first version of 26_rate_limit.sql ran (tests/sql/legacy/) is
migrated by `aipt migrate`, keeps its config, buckets and log, and ends up identical to a fresh install."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import asyncpg
import pytest

from aipt import migrate
from tests.conftest import create_database, drop_database

LEGACY = Path(__file__).parent / "sql" / "legacy" / "26_rate_limit_v1.sql"

# Everything a migration defines in public, in comparable text (grants as sorted lists: revoking and
# granting again reorders an ACL without changing it).
SNAPSHOT = {
    "relations": """
        select c.relname, c.relkind::text, c.relpersistence::text, c.relrowsecurity, c.relforcerowsecurity,
               c.reloptions::text, obj_description(c.oid, 'pg_class'),
               (select array_agg(a::text order by a::text) from unnest(c.relacl) a)
        from pg_catalog.pg_class c
        where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'S')""",
    "columns": """
        select c.relname, a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_catalog.pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
        from pg_catalog.pg_attribute a
        join pg_catalog.pg_class c on c.oid = a.attrelid
        left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v') and a.attnum > 0
          and not a.attisdropped""",
    "constraints": """
        select conrelid::regclass::text, conname, pg_catalog.pg_get_constraintdef(oid)
        from pg_catalog.pg_constraint where connamespace = 'public'::regnamespace""",
    "indexes": "select indexname, indexdef from pg_catalog.pg_indexes where schemaname = 'public'",
    "functions": """
        select p.oid::regprocedure::text, pg_catalog.pg_get_functiondef(p.oid),
               (select array_agg(a::text order by a::text) from unnest(p.proacl) a),
               obj_description(p.oid, 'pg_proc')
        from pg_catalog.pg_proc p where p.pronamespace = 'public'::regnamespace""",
    "views": """select viewname, definition from pg_catalog.pg_views where schemaname = 'public'""",
    "policies": """
        select tablename, policyname, permissive, roles::text, cmd, qual, with_check
        from pg_catalog.pg_policies where schemaname = 'public'""",
    "schemas": "select nspname from pg_catalog.pg_namespace where nspname !~ '^pg_' and nspname <> 'information_schema'",
}


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple]]:
    return {name: sorted(tuple(r) for r in await conn.fetch(sql)) for name, sql in SNAPSHOT.items()}


@pytest.fixture
async def legacy_conn():
    """A database built the way deployed ones were: the migrations before 26, then the first 26."""
    name = f"aipt_legacy_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(await create_database(name))
    try:
        for m in migrate.discover():
            if m.name < "26":
                await conn.execute(m.sql)
        await conn.execute(LEGACY.read_text())
        yield conn
    finally:
        await conn.close()
        await drop_database(name)


async def test_legacy_file_is_what_we_upgrade_from(legacy_conn):
    """The fixture really is the first version: uuid ids, integer tokens, search_path = public, e-mails."""
    types = dict(
        await legacy_conn.fetch(
            """select table_name || '.' || column_name, data_type from information_schema.columns
               where table_schema = 'public' and table_name like 'rate_limit_%'"""
        )
    )
    assert types["rate_limit_buckets.id"] == "uuid" and types["rate_limit_log.id"] == "uuid"
    assert types["rate_limit_buckets.tokens_remaining"] == "integer"
    config = await legacy_conn.fetch("select endpoint_key from public.rate_limit_config")
    assert {r["endpoint_key"] for r in config} == {
        "search", "content_access", "admin_crud", "stripe_webhook", "checkout", "api_general",
    }  # fmt: skip
    assert await legacy_conn.fetchval(
        "select proconfig from pg_catalog.pg_proc where oid = 'public.f_check_rate_limit(text, integer, uuid)'::regprocedure"
    ) == ["search_path=public"]
    assert "email" in await legacy_conn.fetchval("select pg_get_viewdef('public.v_rate_limit_top_users')")


async def test_upgrade_keeps_config_buckets_and_log_and_matches_a_fresh_install(legacy_conn, conn):
    db = legacy_conn
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await db.execute("insert into auth.users (id, email) values ($1, 'alice@example.com'), ($2, 'bob@example.com')", alice, bob)
    # What production looks like: an admin tuned two endpoints, users spent tokens through v1.
    await db.execute("update public.rate_limit_config set requests_per_minute = 45, burst_size = 15 where endpoint_key = 'search'")
    await db.execute("update public.rate_limit_config set is_active = false where endpoint_key = 'api_general'")
    for user, n in ((alice, 4), (bob, 1)):
        for _ in range(n):
            await db.fetch("select * from public.f_check_rate_limit('search', 1, $1)", user)
    await db.fetch("select * from public.f_check_rate_limit('content_access', 2, $1)", alice)
    refilled_at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    await db.execute(
        "update public.rate_limit_buckets set last_refill = $2 where user_id = $1 and endpoint_key = 'content_access'",
        alice,
        refilled_at,
    )
    config_before = await db.fetch(
        "select endpoint_key, requests_per_minute, burst_size, window_size_minutes, is_active from public.rate_limit_config"
    )
    log_before = await db.fetchval("select count(*) from public.rate_limit_log")

    applied = await migrate.migrate(db)  # `aipt migrate` on the deployed database
    assert "26_rate_limit.sql" in applied

    config_after = await db.fetch(
        "select endpoint_key, requests_per_minute, burst_size, window_size_minutes, is_active from public.rate_limit_config"
    )
    assert sorted(map(tuple, config_after)) == sorted(map(tuple, config_before))
    assert set(await db.fetch("select distinct log_mode from public.rate_limit_config")) == {("all",)}

    got = {
        (r["endpoint_key"], r["bucket_key"]): r
        for r in await db.fetch("select * from public.rate_limit_buckets")
    }
    assert set(got) == {("search", f"user:{alice}"), ("search", f"user:{bob}"), ("content_access", f"user:{alice}")}
    a = got[("search", f"user:{alice}")]
    assert (a["user_id"], a["tokens_remaining"], a["request_count"]) == (alice, 11.0, 4)
    assert got[("search", f"user:{bob}")]["tokens_remaining"] == 14.0
    c = got[("content_access", f"user:{alice}")]
    assert (c["tokens_remaining"], c["last_refill"]) == (28.0, refilled_at)
    assert await db.fetchval("select count(*) from public.rate_limit_log") == log_before == 6

    # The kept bucket is live: content_access last refilled long ago, so it is full again.
    r = await db.fetchrow("select * from public.f_check_rate_limit('content_access', 1, $1)", alice)
    assert r["allowed"] and r["tokens_remaining"] == 29

    descriptions = await db.fetch("select endpoint_key, description from public.rate_limit_config")
    assert sorted(map(tuple, descriptions)) == sorted(
        map(tuple, await conn.fetch("select endpoint_key, description from public.rate_limit_config"))
    )

    upgraded, fresh = await snapshot(db), await snapshot(conn)
    assert "f_check_rate_limit(text,integer,uuid)" in {f[0] for f in fresh["functions"]}
    assert {"rate_limit_read", "rate_limit_buckets_read"} & {p[1] for p in fresh["policies"]}
    for part in SNAPSHOT:
        assert upgraded[part] == fresh[part], part
    assert "rate_limit_v1" not in {s for (s,) in upgraded["schemas"]}


async def test_running_the_file_again_changes_nothing(conn):
    (m,) = [m for m in migrate.discover() if m.name == "26_rate_limit.sql"]
    await conn.fetch("select * from public.f_check_rate_limit('search', 1, $1)", uuid.uuid4())
    await conn.execute("update public.rate_limit_config set burst_size = 99, log_mode = 'blocked' where endpoint_key = 'search'")
    before = await snapshot(conn)
    data = await conn.fetch("select * from public.rate_limit_buckets"), await conn.fetch("select * from public.rate_limit_config")
    await conn.execute(m.sql)
    assert await snapshot(conn) == before
    assert (await conn.fetch("select * from public.rate_limit_buckets"), await conn.fetch("select * from public.rate_limit_config")) == data
