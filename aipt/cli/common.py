"""What every command shares: settings, a database connection, output, and one error funnel.

Nothing heavy is imported here at module level: `aipt --help` loads this module, and each command
imports what it uses when it runs (start-up time is an operator's time; bench/cli.py measures it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer

T = TypeVar("T")

state = {"verbose": False}


class CommandError(Exception):
    """The command cannot do what was asked; the message says why."""


def __getattr__(name: str):
    """`common.console` and `common.err_console`, made on first use (rich costs start-up time)."""
    if name not in ("console", "err_console"):
        raise AttributeError(name)
    return _rich(name)


def _rich(name: str):
    if name not in globals():
        from rich.console import Console

        # Off a terminal (pipes, scripts, CI) rich would wrap tables and errors at 80 columns.
        globals()["console"] = Console(width=None if sys.stdout.isatty() else 200)
        globals()["err_console"] = Console(stderr=True, soft_wrap=True)
    return globals()[name]


# What operator commands take from `aipt dev`'s file: where its servers are, never its webhook secret.
DEV_URLS = ("DATABASE_URL", "REDIS_URL")
# The variables this process took from that file (for "aipt dev is not running" when they do not answer).
from_dev: set[str] = set()


def dev_file() -> Path:
    return Path(os.environ.get("AIPT_DEV_DATA", ".aipt")) / "dev.env"


def _read_dev_env(keys: tuple[str, ...]) -> None:
    """Use what `aipt dev` wrote in this folder for the named variables the environment does not set."""
    path = dev_file()
    if keys and path.exists():
        from dotenv import dotenv_values  # pydantic-settings' own dotenv reader

        for key, value in dotenv_values(path).items():
            if key in keys and key not in os.environ and value is not None:
                os.environ[key] = value
                from_dev.add(key)


def load_settings(dev_env: tuple[str, ...] = DEV_URLS):
    """The settings, with the named variables taken from `aipt dev`'s file when unset (none for services)."""
    from aipt import logs, settings

    _read_dev_env(dev_env)
    s = settings.get()
    logs.configure(s.log_format, s.log_level)
    return s


def dev_not_running(key: str) -> str | None:
    """What to say when a URL does not answer and it came from `aipt dev`'s file: that dev has stopped."""
    if key in from_dev:
        return f"{key} came from {dev_file()}: aipt dev is not running; start it with `aipt dev`, or set {key}"
    return None


def not_running_hint(key: str) -> str:
    """dev_not_running's sentence in parentheses, to follow an error; empty when the URL is not dev's."""
    sentence = dev_not_running(key)
    return f" ({sentence})" if sentence else ""


@asynccontextmanager
async def connection():
    from aipt import db

    s = load_settings()
    try:
        conn = await db.connect(s)
    except db.DatabaseUnavailable as exc:
        raise CommandError(f"{exc}{not_running_hint('DATABASE_URL')}") from None
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def redis_client():
    from aipt import queue

    client = queue.connect(load_settings())
    try:
        yield client
    finally:
        await queue.close(client)


def run(main: Callable[[], Awaitable[T] | T]) -> T:
    """Run a command body (a coroutine function or a plain one); failures print one line and exit 1.

    Tracebacks only with -v.
    """
    import asyncio

    try:
        result = main()
        return asyncio.run(result) if asyncio.iscoroutine(result) else result
    except (typer.Exit, typer.Abort, typer.BadParameter, KeyboardInterrupt):
        raise  # click's own: a usage error exits 2 with its message
    except Exception as exc:
        if state["verbose"]:
            raise
        fail(str(exc) or type(exc).__name__)


def fail(message: str) -> None:
    """One red line on stderr, exit 1."""
    _rich("err_console").print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def plain(value: Any) -> Any:
    """A value as JSON has it."""
    import datetime as dt
    import decimal
    import uuid

    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value if isinstance(value, (int, float, bool, str, type(None))) else str(value)


def _cell(value: Any) -> str:
    import datetime as dt

    if value is None:
        return ""
    if isinstance(value, dt.timedelta):
        from aipt.health import age

        return age(value.total_seconds())
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(plain(value))


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(plain(data), indent=2) + "\n")


def emit(rows: Iterable[Mapping[str, Any]], as_json: bool, title: str | None = None, empty: str = "(none)") -> None:
    """Rows as a rich table, or (--json) as one JSON list of objects, [] when there are none."""
    rows = [dict(r) for r in rows]
    if as_json:
        print_json(rows)
        return
    if not rows:
        _rich("console").print(empty, highlight=False)
        return
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for r in rows:
        table.add_row(*(_cell(v) for v in r.values()))
    _rich("console").print(table)


def confirm(question: str, yes: bool) -> None:
    """Ask before a bulk change (unless --yes); no answer (not a terminal, end of input) is no."""
    if yes:
        return
    try:
        if typer.confirm(question, default=False, err=True):
            return
    except typer.Abort:
        pass
    fail("not confirmed: nothing changed (pass --yes to skip the question)")
