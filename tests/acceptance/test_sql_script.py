"""tests/sql/test-production-infrastructure.sql passes under psql, leaves nothing behind, and fails loudly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests import content

SCRIPT = Path(__file__).parents[1] / "sql" / "test-production-infrastructure.sql"
TABLES = ["neurons", "bundles", "bundle_neurons", "content_deletion_log", "user_purchases", "user_subscriptions"]


async def psql(db_url: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "psql", db_url, "-X", "-v", "ON_ERROR_STOP=1", "-f", str(SCRIPT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def row_counts(conn) -> dict[str, int]:
    return {t: await conn.fetchval(f"select count(*) from public.{t}") for t in TABLES}


async def test_the_script_passes_on_a_database_in_use_and_leaves_no_data(conn, db_url):
    # Data of its own, as a production database has: the script must not trip over it.
    n = await content.neuron(conn, "already-here")
    await content.bundle(conn, "already-bundled", neurons=[n])
    assert await conn.fetchval("select public.f_soft_delete_neuron($1)", await content.neuron(conn))
    await content.subscription(conn, tier=7)
    before = await row_counts(conn)

    code, out, err = await psql(db_url)

    assert code == 0, err
    assert out.splitlines()[-1] == "all checks passed"
    assert "soft delete: ok" in out
    assert await row_counts(conn) == before


async def test_the_script_stops_at_the_first_wrong_result(conn, db_url):
    await conn.execute("create policy leak on public.neurons for select using (true)")  # deleted neurons leak to users

    code, out, err = await psql(db_url)

    assert code == 3  # psql's "script stopped by ON_ERROR_STOP"
    assert "check failed: a user reads no neuron row (they carry the body)" in err
    assert "all checks passed" not in out
    assert await conn.fetchval("select count(*) from public.neurons") == 0
