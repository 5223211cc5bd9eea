"""The only module that touches asyncpg: the pool, named queries, and driver errors mapped to ours."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

from aipt.settings import Settings


class DatabaseError(Exception):
    """The database refused or failed an operation."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached right now; the caller should retry later."""


# Errors that mean the connection (or the server) is gone, not that the statement is wrong: retry later.
# InternalClientError is what asyncpg raises when a connection drops under it mid-protocol (a server
# restart); the SQLSTATE class 08 errors (PostgresConnectionError) say so from the server's side.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.PostgresConnectionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


def _load_queries(path: Path) -> dict[str, str]:
    """Read `-- name --` sections of a .sql file into a dict."""
    queries: dict[str, str] = {}
    for match in re.finditer(r"^-- (\w+) --\n(?:--[^\n]*\n)*(.*?)(?=^-- \w+ --$|\Z)", path.read_text(), re.S | re.M):
        queries[match.group(1)] = match.group(2).strip()
    return queries


queries = _load_queries(Path(__file__).with_name("queries.sql"))


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Connections keep no session state here, so skip asyncpg's reset round trip on release."""


async def create_pool(settings: Settings, **overrides) -> asyncpg.Pool:
    settings.require("database_url")
    options = dict(
        dsn=settings.database_url,
        min_size=settings.db.pool_min_size,
        max_size=settings.db.pool_max_size,
        timeout=settings.db.connect_timeout_seconds,
        command_timeout=settings.db.command_timeout_seconds,
        reset=_no_reset,
    )
    options.update(overrides)
    try:
        return await asyncpg.create_pool(**options)
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc


async def connect(settings: Settings) -> asyncpg.Connection:
    """One plain connection, for the CLI and migrations."""
    settings.require("database_url")
    try:
        return await asyncpg.connect(settings.database_url, timeout=settings.db.connect_timeout_seconds)
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc
