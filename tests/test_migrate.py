"""Migrations: applied once, recorded, re-runnable, and a changed applied file is refused."""

import pytest

from aipt import migrate


async def test_every_migration_is_recorded_once(conn):
    names = [r["name"] for r in await conn.fetch("select name from public.schema_migrations order by name")]
    assert names == [m.name for m in migrate.discover()]
    assert await migrate.migrate(conn) == []


async def test_changed_applied_file_is_refused(conn):
    files = migrate.discover()
    changed = [migrate.Migration(files[0].name, files[0].sql + "\n-- edited\n"), *files[1:]]
    with pytest.raises(migrate.MigrationError, match="was changed after it was applied"):
        await migrate.migrate(conn, changed)


async def test_every_file_runs_again_as_plain_sql(conn):
    """psql -f on a migrated database must be a no-op, not an error."""
    before = await conn.fetchval("select count(*) from pg_catalog.pg_class where relnamespace = 'public'::regnamespace")
    for m in migrate.discover():
        await conn.execute(m.sql)
    after = await conn.fetchval("select count(*) from pg_catalog.pg_class where relnamespace = 'public'::regnamespace")
    assert before == after


async def test_every_public_table_has_row_level_security(conn):
    missing = await conn.fetch(
        """select c.relname from pg_catalog.pg_class c
           where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p') and not c.relrowsecurity"""
    )
    assert [r["relname"] for r in missing] == []


async def test_a_failing_file_rolls_back_and_says_which(conn):
    bad = [*migrate.discover(), migrate.Migration("99_bad.sql", "create table public.half (id int); select 1/0;")]
    with pytest.raises(migrate.MigrationError, match="99_bad.sql failed"):
        await migrate.migrate(conn, bad)
    assert await conn.fetchval("select to_regclass('public.half')") is None
    assert not await conn.fetchval("select exists(select 1 from public.schema_migrations where name = '99_bad.sql')")
