"""What every command shares: settings, a database connection, output, and one error funnel."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from aipt import db, logs, settings

T = TypeVar("T")

# Off a terminal (pipes, scripts, CI) rich would wrap tables and errors at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)
state = {"verbose": False}


class CommandError(Exception):
    """The command cannot do what was asked; the message says why."""


# What operator commands take from `aipt dev`'s file: where its servers are, never its webhook secret.
DEV_URLS = ("DATABASE_URL", "REDIS_URL")


def _read_dev_env(keys: tuple[str, ...]) -> None:
    """Use what `aipt dev` wrote in this folder for the named variables the environment does not set."""
    path = Path(os.environ.get("AIPT_DEV_DATA", ".aipt")) / "dev.env"
    if keys and path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key in keys:
                os.environ.setdefault(key, value)


def load_settings(dev_env: tuple[str, ...] = DEV_URLS) -> settings.Settings:
    """The settings, with the named variables taken from `aipt dev`'s file when unset (none for services)."""
    _read_dev_env(dev_env)
    s = settings.get()
    logs.configure(s.log_format, s.log_level)
    return s


@asynccontextmanager
async def connection():
    s = load_settings()
    conn = await db.connect(s)
    try:
        yield conn
    finally:
        await conn.close()


def run(main: Callable[[], Awaitable[T] | T]) -> T:
    """Run a command body (a coroutine function or a plain one); failures print one line and exit 1.

    Tracebacks only with -v.
    """
    try:
        result = main()
        return asyncio.run(result) if asyncio.iscoroutine(result) else result
    except (CommandError, settings.ConfigError, db.DatabaseError, Exception) as exc:
        if isinstance(exc, (typer.Exit, typer.Abort, KeyboardInterrupt)):
            raise
        if state["verbose"]:
            raise
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return str(value) if not isinstance(value, (int, float, bool, str, list, dict, type(None))) else value


def emit(rows: Iterable[Mapping[str, Any]], as_json: bool, title: str | None = None) -> None:
    """Print rows as a rich table, or as JSON lines' worth of one JSON array for scripts."""
    rows = [dict(r) for r in rows]
    if as_json:
        sys.stdout.write(json.dumps([{k: _plain(v) for k, v in r.items()} for r in rows], indent=2) + "\n")
        return
    if not rows:
        console.print("(none)")
        return
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for r in rows:
        table.add_row(*("" if v is None else str(_plain(v)) for v in r.values()))
    console.print(table)
