"""Migrations: applied once, recorded, all-or-nothing, re-runnable, and a changed applied file is refused."""

import uuid

import asyncpg
import pytest

from aipt import migrate
from tests import catalog
from tests.servers import create_database, drop_database


async def test_every_migration_is_recorded_once(conn):
    names = [r["name"] for r in await conn.fetch("select name from public.schema_migrations order by name")]
    assert names == [m.name for m in migrate.discover()]
    assert await migrate.migrate(conn) == []


async def test_changed_applied_file_is_refused(conn):
    files = migrate.discover()
    changed = [migrate.Migration(files[0].name, files[0].sql + "\n-- edited\n"), *files[1:]]
    with pytest.raises(migrate.MigrationError, match="was changed after it was applied"):
        await migrate.migrate(conn, changed)


async def test_a_file_that_names_the_version_it_replaces_is_accepted_where_that_version_ran(conn):
    """00_supabase_compat.sql replaces its first version: a database that ran that one takes it, unrun."""
    (compat,) = [m for m in migrate.discover() if m.name == "00_supabase_compat.sql"]
    (earlier,) = compat.replaces
    await conn.execute("update public.schema_migrations set checksum = $1 where name = $2", earlier, compat.name)
    before = await catalog.fingerprint(conn)

    assert await migrate.migrate(conn) == []

    assert (
        await conn.fetchval("select checksum from public.schema_migrations where name = $1", compat.name)
        == compat.checksum
    )
    assert await catalog.fingerprint(conn) == before
    # Any other earlier content is still refused.
    await conn.execute(
        "update public.schema_migrations set checksum = 'not-a-known-version' where name = $1", compat.name
    )
    with pytest.raises(migrate.MigrationError, match="00_supabase_compat.sql was changed"):
        await migrate.migrate(conn)


async def test_the_current_files_run_again_as_plain_sql(conn):
    """psql -f of a current file on a migrated database is a no-op, not an error. (The files before 35
    describe objects that later files renamed or replaced: they apply once, in order, not again.)"""
    n = await conn.fetchval("insert into public.neurons (slug, title) values ('kept', 'Kept') returning id")
    before = await catalog.fingerprint(conn)
    for m in migrate.discover():
        if m.name >= "35":
            await conn.execute(m.sql)
    assert await catalog.fingerprint(conn) == before
    assert await conn.fetchval("select slug from public.neurons where id = $1", n) == "kept"


async def test_the_chain_applied_with_psql_order_builds_what_aipt_migrate_builds(conn):
    name = f"aipt_psql_{uuid.uuid4().hex[:12]}"
    db = await asyncpg.connect(await create_database(name))
    try:
        for m in migrate.discover():
            await db.execute(m.sql)
        await conn.execute("drop table public.schema_migrations")  # the ledger: aipt migrate's own, not the schema's
        assert await catalog.fingerprint(db) == await catalog.fingerprint(conn)
    finally:
        await db.close()
        await drop_database(name)


async def test_every_public_table_has_row_level_security(conn):
    missing = await conn.fetch(
        """select c.relname from pg_catalog.pg_class c
           where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p') and not c.relrowsecurity"""
    )
    assert [r["relname"] for r in missing] == []


# --- all or nothing ---------------------------------------------------------------------------


@pytest.fixture
async def empty_db():
    name = f"aipt_empty_{uuid.uuid4().hex[:12]}"
    db = await asyncpg.connect(await create_database(name))
    yield db
    await db.close()
    await drop_database(name)


async def test_a_failing_file_says_where_and_why(conn):
    bad = [*migrate.discover(), migrate.Migration("99_bad.sql", "create table public.half (id int);\n\n  select 1/0;")]
    with pytest.raises(migrate.MigrationError) as failed:
        await migrate.migrate(conn, bad)
    message = str(failed.value)
    assert message.startswith("99_bad.sql line 3: select 1/0: division by zero (22012)")
    assert "nothing was changed" in message and "\n" not in message
    assert await conn.fetchval("select to_regclass('public.half')") is None
    assert not await conn.fetchval("select exists(select 1 from public.schema_migrations where name = '99_bad.sql')")


async def test_a_failure_in_a_late_file_leaves_a_new_database_empty(empty_db):
    bad = [*migrate.discover(), migrate.Migration("99_bad.sql", "select 1/0")]
    with pytest.raises(migrate.MigrationError, match="99_bad.sql"):
        await migrate.migrate(empty_db, bad)
    # Not one file of the run committed: no table, no ledger, no auth schema of ours.
    assert (
        await empty_db.fetchval("select count(*) from pg_catalog.pg_class where relnamespace = 'public'::regnamespace")
        == 0
    )
    assert await empty_db.fetchval("select to_regnamespace('auth') is null or to_regclass('auth.users') is not null")
    assert await migrate.migrate(empty_db) == [m.name for m in migrate.discover()]


async def test_a_file_may_not_control_transactions(empty_db):
    sneaky = [migrate.Migration("01_commit.sql", "create table public.t (id int);\ncommit;\n")]
    with pytest.raises(migrate.MigrationError, match="01_commit.sql line 2: commit: a migration must not control"):
        await migrate.migrate(empty_db, sneaky)
    assert await empty_db.fetchval("select to_regclass('public.t')") is None
