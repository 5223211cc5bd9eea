"""`aipt ratelimit dashboard|top-users`, run through the real CLI entry point against a test database."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest
from typer.testing import CliRunner

from aipt import db, settings
from aipt.cli import app
from tests.servers import create_database, drop_database

ALICE = uuid.UUID("00000000-0000-0000-0000-00000000a11c")


@pytest.fixture(scope="module")
async def seeded_url(template_db):
    """A test database with a known hour of rate-limit history, shared by this module (the CLI only reads)."""
    name = f"aipt_cli_{uuid.uuid4().hex[:12]}"
    url = await create_database(name, template=template_db)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("insert into auth.users (id, email) values ($1, 'alice@example.com')", ALICE)
        await conn.executemany(
            """insert into public.rate_limit_buckets (endpoint_key, bucket_key, user_id, tokens_remaining, last_refill,
                                                     last_request, request_count)
               values ($1, $2, $3, 0, now(), now() - make_interval(mins => $4), $5)""",
            [
                ("search", f"user:{ALICE}", ALICE, 1, 3),
                ("search", "ip:192.0.2.8", None, 4, 1),
                ("user_auth", f"user:{ALICE}", ALICE, 5, 1),
            ],
        )
        await conn.executemany(
            """insert into public.rate_limit_log (request_timestamp, endpoint_key, user_id, ip_address, was_allowed,
                                                 tokens_consumed, tokens_remaining)
               values (now() - make_interval(mins => $1), $2, $3, $4::inet, $5, 1, 0)""",
            [
                (1, "search", ALICE, None, True),
                (2, "search", ALICE, None, False),
                (3, "search", ALICE, None, False),
                (4, "search", None, "192.0.2.8", False),
                (5, "user_auth", ALICE, None, True),
            ],
        )
    finally:
        await conn.close()
    yield url
    await drop_database(name)


@pytest.fixture
def cli(seeded_url, monkeypatch):
    """Invoke `aipt ...` with DATABASE_URL pointing at the seeded database."""
    monkeypatch.setenv("DATABASE_URL", seeded_url)
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells to 80 columns when there is no terminal
    settings.get.cache_clear()
    yield lambda *args: CliRunner().invoke(app, list(args))
    settings.get.cache_clear()


def test_the_cli_queries_exist():
    assert {"rate_limit_dashboard", "rate_limit_top_users"} <= set(db.queries)


def test_dashboard_json(cli):
    result = cli("ratelimit", "dashboard", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["endpoint_key"]: r for r in json.loads(result.stdout)}
    assert len(rows) == 6
    assert rows["search"]["requests_last_hour"] == 4 and rows["search"]["blocked_last_hour"] == 3
    assert rows["search"]["block_rate_percent"] == 75.0
    assert rows["user_auth"]["requests_last_hour"] == 1 and rows["user_auth"]["block_rate_percent"] == 0.0
    assert list(rows)[0] == "search"  # busiest first


def test_dashboard_table(cli):
    result = cli("ratelimit", "dashboard")
    assert result.exit_code == 0, result.output
    assert "Rate limits, last hour" in result.stdout
    assert "stripe_webhook" in result.stdout and "75.0" in result.stdout


def test_top_users_json_and_limit(cli):
    result = cli("ratelimit", "top-users", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    got = [
        (r["email"], r["endpoint_key"], r["bucket_key"], r["requests_last_24h"], r["blocked_last_24h"]) for r in rows
    ]
    assert got == [
        ("alice@example.com", "search", f"user:{ALICE}", 3, 2),
        (None, "search", "ip:192.0.2.8", 1, 1),
        ("alice@example.com", "user_auth", f"user:{ALICE}", 1, 0),
    ]

    limited = cli("ratelimit", "top-users", "--json", "--limit", "1")
    assert [r["bucket_key"] for r in json.loads(limited.stdout)] == [f"user:{ALICE}"]


def test_top_users_table(cli):
    result = cli("ratelimit", "top-users", "-n", "5")
    assert result.exit_code == 0, result.output
    assert "Top callers, last 24 hours" in result.stdout and "192.0.2.8" in result.stdout


def test_a_database_error_is_one_line_and_exit_1(cli, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/aipt_no_such_database")
    settings.get.cache_clear()
    result = cli("ratelimit", "dashboard")
    assert result.exit_code == 1
    assert "error:" in result.output and "aipt_no_such_database" in result.output
