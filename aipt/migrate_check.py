"""`aipt migrate --check`: what a run would do, found by doing it in a transaction that is rolled back.

The SQL files hold the rules (what they create, adopt, change, and what they refuse), so the check does
not restate them: it takes a picture of the public schema, runs every pending file, takes the picture
again inside the same transaction, rolls back, and reports the difference. A refusal is the run's own
error. Nothing is changed; the run holds its locks until the rollback, as a real run would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncpg

from aipt import migrate

PICTURE = {
    "tables": """
        select c.relname, c.relkind::text, c.relpersistence::text, c.reltuples::bigint, c.oid::bigint
        from pg_catalog.pg_class c
        where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm')""",
    "columns": """
        select c.relname, a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
        from pg_catalog.pg_attribute a join pg_catalog.pg_class c on c.oid = a.attrelid
        where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm')
          and a.attnum > 0 and not a.attisdropped""",
    "constraints": """
        select conrelid::regclass::text, conname, pg_catalog.pg_get_constraintdef(oid)
        from pg_catalog.pg_constraint where connamespace = 'public'::regnamespace and conrelid <> 0""",
    "indexes": "select tablename, indexname, indexdef from pg_catalog.pg_indexes where schemaname = 'public'",
    "functions": """
        select p.oid::regprocedure::text, pg_catalog.pg_get_function_result(p.oid),
               md5(p.prosrc || coalesce(p.proconfig::text, '') || p.prosecdef::text || p.provolatile::text),
               coalesce(p.proacl::text, '')
        from pg_catalog.pg_proc p where p.pronamespace = 'public'::regnamespace""",
    "policies": """
        select tablename, policyname, md5(concat_ws('|', permissive, roles::text, cmd, qual, with_check))
        from pg_catalog.pg_policies where schemaname = 'public'""",
    "triggers": """
        select t.tgrelid::regclass::text, t.tgname, pg_catalog.pg_get_triggerdef(t.oid)
        from pg_catalog.pg_trigger t join pg_catalog.pg_class c on c.oid = t.tgrelid
        where c.relnamespace = 'public'::regnamespace and not t.tgisinternal""",
    "grants": """
        select c.relname, coalesce(c.relacl::text, '') || coalesce((
                 select string_agg(a.attname || coalesce(a.attacl::text, ''), ',' order by a.attnum)
                 from pg_catalog.pg_attribute a where a.attrelid = c.oid and a.attacl is not null), '')
        from pg_catalog.pg_class c where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'S')""",
}

KIND = {"r": "table", "p": "table", "v": "view", "m": "materialized view"}


async def picture(conn: asyncpg.Connection) -> dict[str, list[tuple]]:
    return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in PICTURE.items()}


@dataclass
class Report:
    """What a run would do; `refused` is set when it would fail."""

    built_by_aipt: bool = False
    pending: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    create: list[str] = field(default_factory=list)
    adopt: list[str] = field(default_factory=list)
    change: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    refused: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.refused is None

    def lines(self) -> list[str]:
        origin = ("built by aipt" if self.built_by_aipt
                  else "not built by aipt: its tables are adopted" if self.adopt else "empty")  # fmt: skip
        out = [f"database: {origin}", f"pending:  {', '.join(self.pending) or '(none)'}"]
        if self.accepted:
            out.append(f"accepted: {', '.join(self.accepted)} (an earlier version of the file ran here)")
        for label, items in (("create", self.create), ("adopt", self.adopt), ("change", self.change),
                             ("keep", self.keep)):  # fmt: skip
            out.append(f"{label + ':':9} {items[0] if items else '(nothing)'}")
            out.extend(f"          {item}" for item in items[1:])
        if self.refused:
            out.append(f"refuse:   {self.refused}")
            out.append("a real run would fail, and would change nothing")
        else:
            out.append("refuse:   (nothing)")
            out.append(f"a real run would succeed (dry run rolled back after {self.seconds:.1f} s)")
        return out


def _by(rows: list[tuple], *key: int) -> dict:
    return {tuple(r[k] for k in key) if len(key) > 1 else r[key[0]]: r for r in rows}


def _diff(before: dict[str, list[tuple]], after: dict[str, list[tuple]], built_by_aipt: bool, report: Report) -> None:
    tables_b, tables_a = _by(before["tables"], 0), _by(after["tables"], 0)
    cols_b, cols_a = {}, {}
    for rows, into in ((before["columns"], cols_b), (after["columns"], cols_a)):
        for table, num, name, typ in rows:
            into.setdefault(table, {})[num] = (name, typ)

    for name, row in sorted(tables_a.items()):
        if name not in tables_b:
            report.create.append(f"{KIND[row[1]]} {name}")
    for name, row in sorted(tables_b.items()):
        kind = KIND[row[1]]
        if name not in tables_a:
            report.change.append(f"{kind} {name}: dropped")
            continue
        if row[4] != tables_a[name][4]:
            notes = [f"rebuilt ({_names(cols_b.get(name, {}))} -> {_names(cols_a.get(name, {}))})"]
        else:
            notes = _column_changes(cols_b.get(name, {}), cols_a.get(name, {}))
        if row[2] != tables_a[name][2]:
            notes.append("unlogged" if tables_a[name][2] == "u" else "logged")
        for part, label in (("constraints", "constraint"), ("indexes", "index"), ("triggers", "trigger"),
                            ("policies", "policy")):  # fmt: skip
            b = {r[1]: r[2] for r in before[part] if r[0] == name}
            a = {r[1]: r[2] for r in after[part] if r[0] == name}
            notes += [f"+{label} {n}" for n in sorted(a.keys() - b.keys())]
            notes += [f"-{label} {n}" for n in sorted(b.keys() - a.keys())]
            notes += [f"~{label} {n}" for n in sorted(k for k in a.keys() & b.keys() if a[k] != b[k])]
        grants_b, grants_a = _by(before["grants"], 0).get(name), _by(after["grants"], 0).get(name)
        if grants_b != grants_a:
            notes.append("grants")
        if not built_by_aipt and kind == "table":
            report.adopt.append(f"table {name} ({row[3]} rows){': ' + ', '.join(notes) if notes else ''}")
        elif notes:
            report.change.append(f"{kind} {name}: {', '.join(notes)}")
        else:
            report.keep.append(f"{kind} {name}")

    funcs_b, funcs_a = _by(before["functions"], 0), _by(after["functions"], 0)
    created = sorted(funcs_a.keys() - funcs_b.keys())
    if created:
        report.create.append(f"{len(created)} function(s): {', '.join(created)}")
    for sig in sorted(funcs_b.keys() - funcs_a.keys()):
        report.change.append(f"function {sig}: dropped")
    for sig in sorted(funcs_b.keys() & funcs_a.keys()):
        b, a = funcs_b[sig], funcs_a[sig]
        if b[1:3] != a[1:3]:
            report.change.append(
                f"function {sig}: replaced" + (f" (returns {a[1]}, was {b[1]})" if a[1] != b[1] else "")
            )
        elif b[3] != a[3]:
            report.change.append(f"function {sig}: grants")


async def check(conn: asyncpg.Connection, migrations: list[migrate.Migration] | None = None) -> Report:
    """Dry-run the pending migrations and report what they would do. Changes nothing."""
    migrations = migrate.discover() if migrations is None else migrations
    report = Report()
    ledger = await conn.fetchval("select to_regclass('public.schema_migrations') is not null")
    applied = dict(await conn.fetch("select name, checksum from public.schema_migrations")) if ledger else {}
    report.built_by_aipt = bool(applied)
    report.pending = [m.name for m in migrations if m.name not in applied]
    before = await picture(conn)
    # Exact row counts where counting is cheap; the planner's estimate for big tables.
    for i, (name, kind, persistence, estimate, oid) in enumerate(before["tables"]):
        if kind in ("r", "p") and estimate < 1_000_000:
            quoted = '"' + name.replace('"', '""') + '"'
            count = await conn.fetchval(f"select count(*) from public.{quoted}")
            before["tables"][i] = (name, kind, persistence, count, oid)
    started = time.perf_counter()
    try:
        run, after = await migrate.dry_run(conn, migrations, inspect=picture)
    except migrate.MigrationError as exc:
        report.refused = str(exc)
        return report
    report.seconds = time.perf_counter() - started
    report.accepted = run.accepted
    _diff(before, after, report.built_by_aipt, report)
    return report


def _names(columns: dict[int, tuple[str, str]]) -> str:
    return ", ".join(name for _, (name, _) in sorted(columns.items()))


def _column_changes(before: dict[int, tuple[str, str]], after: dict[int, tuple[str, str]]) -> list[str]:
    notes = []
    for num, (name, typ) in sorted(after.items()):
        if num not in before:
            notes.append(f"+{name}")
        elif before[num][0] != name:
            notes.append(f"{before[num][0]} renamed {name}")
        if num in before and before[num][1] != typ:
            notes.append(f"{name} {before[num][1]} -> {typ}")
    notes += [f"-{name}" for num, (name, _) in sorted(before.items()) if num not in after]
    return notes
