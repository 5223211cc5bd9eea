"""Apply schema/*.sql in order, once each, under an advisory lock, recording checksums.

An applied file whose content changed is refused: a migration that ran in production is history,
and a change to it belongs in a new file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

LOCK_KEY = 0x61697074  # "aipt": one migrator at a time, across processes and hosts

LEDGER = """
create table if not exists public.schema_migrations (
  name text primary key,
  checksum text not null,
  applied_at timestamptz not null default now()
);
alter table public.schema_migrations enable row level security;
revoke all on public.schema_migrations from public;
"""


class MigrationError(Exception):
    """A migration could not be applied."""


def schema_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "schema", here / "_data" / "schema"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("schema/ not found")


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path | None = None) -> list[Migration]:
    files = sorted((directory or schema_dir()).glob("*.sql"))
    return [Migration(f.name, f.read_text()) for f in files]


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is new; return the names applied. Raises MigrationError on a changed file."""
    migrations = discover() if migrations is None else migrations
    applied_now: list[str] = []
    await conn.execute("select pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(LEDGER)
        applied = dict(await conn.fetch("select name, checksum from public.schema_migrations"))
        for m in migrations:
            if m.name in applied:
                if applied[m.name] != m.checksum:
                    raise MigrationError(f"{m.name} was changed after it was applied; put the change in a new file")
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "insert into public.schema_migrations (name, checksum) values ($1, $2)", m.name, m.checksum
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"{m.name} failed: {exc}") from exc
            applied_now.append(m.name)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", LOCK_KEY)
    return applied_now
