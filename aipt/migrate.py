"""Apply schema/*.sql in order, once each, all in one transaction, recording checksums.

A run is all-or-nothing: every pending file, and the ledger rows that record them, commit together
or not at all (PostgreSQL DDL is transactional), so a failure leaves the database exactly as it was.
Files run statement by statement, so a failure names its file, line and statement.

An applied file whose content changed is refused: a migration that ran in production is history,
and a change to it belongs in a new file. The one way out is explicit: a file may say, in a
`-- aipt:replaces sha256:<hex>` line, which earlier version of itself it stands for (it must do
nothing more where that version ran); a database that applied that version accepts it unchanged.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

LOCK_KEY = 0x61697074  # "aipt": one migrator at a time, across processes and hosts

# The ledger is ours alone: no API role may read or change it, whatever the database's defaults.
LEDGER = """
create table if not exists public.schema_migrations (
  name text primary key,
  checksum text not null,
  applied_at timestamptz not null default now()
);
alter table public.schema_migrations enable row level security;
revoke all on public.schema_migrations from public;
do $$
declare r text;
begin
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if exists (select 1 from pg_catalog.pg_roles where rolname = r) then
      execute format('revoke all on public.schema_migrations from %I', r);
    end if;
  end loop;
end
$$;
"""

_REPLACES = re.compile(r"^-- aipt:replaces sha256:([0-9a-f]{64})\s*$", re.M)
_TRANSACTION_CONTROL = re.compile(r"^(begin|commit|rollback|end|start\s+transaction|savepoint|release)\b", re.I)


class MigrationError(Exception):
    """A migration could not be applied; nothing was changed."""


@dataclass(frozen=True)
class Statement:
    line: int  # 1-based line of the statement's first character in its file
    sql: str

    @property
    def head(self) -> str:
        """The statement's first line, for messages."""
        first = next((ln.strip() for ln in self.sql.splitlines() if ln.strip() and not ln.strip().startswith("--")), "")
        return first if len(first) <= 100 else first[:97] + "..."


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def replaces(self) -> frozenset[str]:
        """Checksums of the earlier versions this file stands for (see the module docstring)."""
        return frozenset(_REPLACES.findall(self.sql))

    def statements(self) -> list[Statement]:
        return split(self.sql)


@dataclass
class Run:
    """What a run did (or, rolled back, would do)."""

    applied: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # earlier versions of a file, taken as this one


def schema_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "schema", here / "_data" / "schema"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("schema/ not found")


def discover(directory: Path | None = None) -> list[Migration]:
    files = sorted((directory or schema_dir()).glob("*.sql"))
    return [Migration(f.name, f.read_text()) for f in files]


def split(sql: str) -> list[Statement]:
    """Split SQL into statements at top-level semicolons (quotes, dollar quotes and comments respected)."""
    out: list[Statement] = []
    i, n, start = 0, len(sql), 0
    while i < n:
        c = sql[i]
        if (after := _skip_comment(sql, i, n)) != i:
            i = after
        elif c == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            i += 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                elif sql[i] == "'":
                    if sql.startswith("''", i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
        elif c == '"':
            j = sql.find('"', i + 1)
            while j >= 0 and sql.startswith('""', j):
                j = sql.find('"', j + 2)
            i = n if j < 0 else j + 1
        elif (
            c == "$"
            and (m := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:]))
            and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_"))
        ):
            tag = m.group(0)
            j = sql.find(tag, i + len(tag))
            i = n if j < 0 else j + len(tag)
        elif c == ";":
            _add(out, sql, start, i)
            i += 1
            start = i
        else:
            i += 1
    _add(out, sql, start, n)
    return out


def _skip_comment(sql: str, i: int, n: int) -> int:
    """The index after the comment that starts at i (nested block comments included), or i if none does."""
    if sql.startswith("--", i):
        j = sql.find("\n", i)
        return n if j < 0 else j + 1
    if sql.startswith("/*", i):
        depth, i = 1, i + 2
        while i < n and depth:
            if sql.startswith("/*", i):
                depth, i = depth + 1, i + 2
            elif sql.startswith("*/", i):
                depth, i = depth - 1, i + 2
            else:
                i += 1
    return i


def _add(out: list[Statement], sql: str, start: int, end: int) -> None:
    """Keep sql[start:end] as a statement unless it is only whitespace and comments; it starts at its first token."""
    while start < end:
        after = _skip_comment(sql, start, end)
        if after != start:
            start = after
        elif sql[start].isspace():
            start += 1
        else:
            break
    text = sql[start:end].strip()
    if text:
        out.append(Statement(sql.count("\n", 0, start) + 1, text))


def _reason(exc: asyncpg.PostgresError) -> str:
    """The server's message, its SQLSTATE and detail, on one line."""
    reason = getattr(exc, "message", None) or str(exc)
    if getattr(exc, "sqlstate", None):
        reason += f" ({exc.sqlstate})"
    if detail := getattr(exc, "detail", None):
        reason += f"; {detail}"
    return " ".join(reason.split())


async def _run_file(conn: asyncpg.Connection, m: Migration) -> None:
    for st in m.statements():
        if _TRANSACTION_CONTROL.match(re.sub(r"^(--[^\n]*\n|\s)+", "", st.sql)):
            raise MigrationError(
                f"{m.name} line {st.line}: {st.head}: a migration must not control transactions "
                "(aipt migrate runs every pending file in one); remove it"
            )
        try:
            await conn.execute(st.sql)
        except asyncpg.PostgresError as exc:
            hint = getattr(exc, "hint", None) or "nothing was changed; `aipt migrate --check` shows what a run would do"
            raise MigrationError(f"{m.name} line {st.line}: {st.head}: {_reason(exc)} (hint: {hint})") from exc


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> Run:
    await conn.execute("select pg_advisory_xact_lock($1)", LOCK_KEY)
    await conn.execute(LEDGER)
    applied = dict(await conn.fetch("select name, checksum from public.schema_migrations"))
    run = Run()
    for m in migrations:
        if m.name in applied:
            if applied[m.name] == m.checksum:
                continue
            if applied[m.name] in m.replaces:
                await conn.execute(
                    "update public.schema_migrations set checksum = $2 where name = $1", m.name, m.checksum
                )
                run.accepted.append(m.name)
                continue
            raise MigrationError(f"{m.name} was changed after it was applied; put the change in a new file")
        await _run_file(conn, m)
        await conn.execute("insert into public.schema_migrations (name, checksum) values ($1, $2)", m.name, m.checksum)
        run.applied.append(m.name)
    return run


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is new, all in one transaction; return the names applied.

    Raises MigrationError (the database unchanged) on a failing or a changed file.
    """
    migrations = discover() if migrations is None else migrations
    async with conn.transaction():
        run = await _apply(conn, migrations)
    return run.applied


class _Rollback(Exception):
    pass


async def dry_run(conn: asyncpg.Connection, migrations: list[Migration] | None = None, inspect=None):
    """Apply what is new in a transaction that is always rolled back; return (run, what inspect saw).

    inspect, when given, is awaited with the connection after the files ran, inside that transaction.
    Raises MigrationError when a real run would fail.
    """
    migrations = discover() if migrations is None else migrations
    seen = None
    try:
        async with conn.transaction():
            run = await _apply(conn, migrations)
            if inspect is not None:
                seen = await inspect(conn)
            raise _Rollback
    except _Rollback:
        pass
    return run, seen
