"""tests/sql/parts/rate_limit.sql: the psql part of the production-infrastructure script passes on a
migrated database, leaves nothing behind, and does fail when the rate limiter misbehaves."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

PART = (Path(__file__).parents[1] / "sql" / "parts" / "rate_limit.sql").read_text()


async def _counts(conn) -> tuple:
    return tuple(
        [
            await conn.fetchval(f"select count(*) from public.{t}")
            for t in ("rate_limit_config", "rate_limit_buckets", "rate_limit_log")
        ]
    )


async def test_the_part_passes_and_leaves_nothing_behind(conn):
    before = await _counts(conn)
    async with conn.transaction():  # as the including script does: begin ... (here: commit)
        await conn.execute(PART)
        assert await conn.fetchval("select current_user") == "postgres"
    assert await _counts(conn) == before


async def test_the_part_fails_on_a_wrong_result(conn):
    with pytest.raises(asyncpg.RaiseError, match="expected 6 log rows"):
        async with conn.transaction():
            # Sabotage: new endpoints log only blocked requests, so the part's log count is wrong.
            await conn.execute("alter table public.rate_limit_config alter column log_mode set default 'blocked'")
            await conn.execute(PART)
    assert (
        await conn.fetchval(
            "select column_default from information_schema.columns"
            " where table_name = 'rate_limit_config' and column_name = 'log_mode'"
        )
        == "'all'::text"
    )
