"""23_neuron_delete_guard.sql re-runs as a no-op and upgrades the first version in place."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg

from aipt import migrate
from tests import catalog, content
from tests.conftest import create_database, drop_database
from tests.roles import acting_as

FILE = migrate.schema_dir() / "23_neuron_delete_guard.sql"
LEGACY = Path(__file__).parent / "sql" / "legacy" / "23_neuron_delete_guard_v1.sql"


async def test_running_the_file_again_changes_nothing(conn):
    n = await content.neuron(conn)
    b = await content.bundle(conn, neurons=[n])
    assert await conn.fetchval("select public.f_soft_delete_bundle($1)", b)
    before = await catalog.fingerprint(conn)
    rows_before = await conn.fetch("select * from public.content_deletion_log order by id")

    await conn.execute(FILE.read_text())
    await conn.execute(FILE.read_text())

    assert await catalog.fingerprint(conn) == before
    assert await conn.fetch("select * from public.content_deletion_log order by id") == rows_before
    assert await content.live_links(conn, bundle_id=b) == set()


async def legacy_soft_delete(db: asyncpg.Connection, admin: uuid.UUID, sql: str, *args) -> None:
    """Call a first-version function as an admin JWT (it checks only the JWT), committed."""
    async with db.transaction():
        claims = {"role": "authenticated", "sub": str(admin), "app_metadata": {"role": "admin"}}
        await db.execute("select set_config('request.jwt.claims', $1, true)", json.dumps(claims))
        assert await db.fetchval(sql, *args) is True


async def test_a_database_where_the_first_version_ran_ends_identical_to_a_fresh_install(conn):
    fresh = await catalog.fingerprint(conn)

    name = f"aipt_up_{uuid.uuid4().hex[:12]}"
    db = await asyncpg.connect(await create_database(name))
    try:
        await migrate.migrate(db, [m for m in migrate.discover() if m.name < FILE.name])
        await db.execute(LEGACY.read_text())

        admin = await content.user(db, "admin@example.test")
        kept, in_retired, typo = [await content.neuron(db, slug) for slug in ("kept", "in-retired", "typo")]
        main = await content.bundle(db, "main", neurons=[kept, in_retired])
        retired = await content.bundle(db, "retired", neurons=[in_retired])
        await legacy_soft_delete(db, admin, "select public.f_soft_delete_bundle($1, 'discontinued')", retired)
        await legacy_soft_delete(db, admin, "select public.f_soft_delete_neuron($1, 'typo in the title')", typo)
        # The first version's links have no state: the deleted bundle's link stays readable to all.
        async with acting_as(db, "anon"):
            assert await db.fetchval("select count(*) from public.bundle_neurons where bundle_id = $1", retired) == 1

        assert await migrate.migrate(db) == [m.name for m in migrate.discover() if m.name >= FILE.name]
        assert await catalog.fingerprint(db) == fresh

        # The data is all there, and the deletions it had keep their who, when and why.
        assert await db.fetchval("select count(*) from public.neurons") == 3
        assert await db.fetchval("select count(*) from public.bundle_neurons") == 3
        row = await db.fetchrow(
            "select deleted_at, deleted_by, deletion_reason from public.neurons where id = $1", typo
        )
        assert row["deleted_at"] is not None and (row["deleted_by"], row["deletion_reason"]) == (
            admin,
            "typo in the title",
        )
        # The links of what was deleted went down with it; the others stayed up.
        assert await content.live_links(db, bundle_id=retired) == set()
        assert await content.live_links(db, bundle_id=main) == {(main, kept), (main, in_retired)}
        assert await content.inconsistent_links(db) == []
        # Every deleted row's history starts with its delete, recorded from the row.
        for content_id, reason in ((retired, "discontinued"), (typo, "typo in the title")):
            (entry,) = await content.history(db, content_id)
            assert (entry["action"], entry["actor_id"], entry["actor_role"]) == ("soft_delete", admin, "unrecorded")
            assert entry["reason"] == reason

        # And it all works as on a fresh install.
        member = await content.user(db)
        async with acting_as(db, "authenticated", member):
            assert {r["slug"] for r in await db.fetch("select slug from public.neurons")} == {"kept", "in-retired"}
            assert await db.fetch("select * from public.v_neurons_deleted") == []
        await content.neuron(db, "typo")  # a deleted slug no longer blocks re-creating it
        assert await db.fetchval("select public.f_restore_bundle($1)", retired) is True
        assert await content.live_links(db, bundle_id=retired) == {(retired, in_retired)}
        await db.execute("delete from auth.users where id = $1", admin)  # now on delete set null
        assert await db.fetchval("select deleted_by from public.neurons where id = $1", typo) is None
    finally:
        await db.close()
        await drop_database(name)
