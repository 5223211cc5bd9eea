"""`aipt status` as a monitor check: exit 0 when healthy, 1 with the reasons when something needs attention."""

from __future__ import annotations

import json

import pytest

from aipt import settings as settings_mod
from tests.ops import event, live_worker


async def test_healthy_while_a_worker_is_alive_and_events_flow(aipt, conn):
    await event(conn, "ok", 0.01, 0.01)
    async with live_worker(aipt.settings):
        result = await aipt("status", "--json")
        text = await aipt("status")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["healthy"] and report["attention"] == []
    assert (report["postgres"], report["redis"]) == ("ok", "ok")
    assert report["workers"]["alive"] and "j_complete=" in report["workers"]["heartbeat"]
    assert report["events"]["last_hour"] == {"ok": 1} and report["events"]["dead"] == 0
    assert report["queue"] == {"name": aipt.settings.queue.name, "depth": 0}
    assert report["crons"]["sweeper"]["enqueued"] == 0  # it ran at start-up
    assert report["crons"]["cleanup:stripe_events"] == {"schedule": "03:10", "status": "never ran"}
    assert text.exit_code == 0 and "healthy" in text.stdout


async def test_dead_letters_old_pending_events_no_worker_and_a_failed_cleanup_need_attention(aipt, conn):
    await event(conn, "error", 1, failure={"dead": 0.5})
    await event(conn, "pending", 0.01)  # 14 minutes: older than the 300 s threshold
    await event(conn, "pending", 0)
    await conn.execute(
        "insert into public.cleanup_runs (job, status, finished_at, error) values ('rate_limit', 'error', now(), 'disk full')"
    )
    result = await aipt("status", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert not report["healthy"] and report["workers"]["alive"] is False
    assert report["events"]["dead"] == 1 and report["events"]["last_hour"] == {"pending": 2}
    assert report["events"]["oldest_pending_seconds"] == pytest.approx(864, abs=30)
    reasons = "\n".join(report["attention"])
    assert len(report["attention"]) == 4
    for expected in ("1 dead event(s)", "oldest pending event has waited 14m", "no live worker", "cleanup:rate_limit last run error: disk full"):
        assert expected in reasons
    text = await aipt("status")
    assert text.exit_code == 1 and "NEEDS ATTENTION" in text.stdout and "aipt dlq list" in text.stdout


async def test_a_pending_event_younger_than_the_threshold_is_fine(aipt, conn, monkeypatch):
    await event(conn, "pending", 0.01)
    monkeypatch.setenv("AIPT_STATUS_PENDING_MAX_AGE_SECONDS", "3600")
    settings_mod.get.cache_clear()
    result = await aipt("status", "--json")
    assert result.exit_code == 1, result.output
    [reason] = json.loads(result.stdout)["attention"]
    assert reason.startswith("no live worker")


async def test_redis_unreachable_is_reported_and_fails_the_check(aipt, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    settings_mod.get.cache_clear()
    result = await aipt("status", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["redis"].startswith("down") and report["postgres"] == "ok"
    assert report["workers"]["alive"] is None and report["events"]["dead"] == 0
    assert any(line.startswith("Redis is unreachable") for line in report["attention"])


async def test_postgres_unreachable_is_reported_and_fails_the_check(aipt, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    settings_mod.get.cache_clear()
    result = await aipt("status")
    assert result.exit_code == 1, result.output
    assert "Postgres is unreachable" in result.stdout and "redis" in result.stdout
