"""`aipt status` as a monitor check: exit 0 when healthy, 1 with the reasons when something needs attention."""

from __future__ import annotations

import json

import pytest

from aipt import fixtures, queue
from aipt import settings as settings_mod
from tests.billing import seed_catalogue, status, store, variant
from tests.ops import event, live_worker
from tests.servers import wait_for


async def test_healthy_while_a_worker_is_alive_and_events_flow(aipt, conn):
    await event(conn, "ok", 0.01, 0.01)
    async with live_worker(aipt.settings):
        result = await aipt("status", "--json")
        text = await aipt("status")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["healthy"] and report["attention"] == []
    assert (report["postgres"], report["redis"]) == ("ok", "ok")
    assert (
        report["workers"]["alive"]
        and "last hour: applied=0 failed=0 retried=0 dead=0" in report["workers"]["heartbeat"]
    )
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
    for expected in (
        "1 dead event(s)",
        "oldest pending event has waited 14m",
        "no live worker",
        "cleanup:rate_limit last run error: disk full",
    ):
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


async def test_workers_count_what_their_jobs_did_not_what_arq_saw(aipt, conn, redis):
    """arq counts jobs that raised; ours never do, so its heartbeat said 0 failures after many."""
    await seed_catalogue(conn)
    s = aipt.settings.model_copy(
        update={
            "queue": aipt.settings.queue.model_copy(update={"health_check_seconds": 0.2}),
            "retry": aipt.settings.retry.model_copy(update={"attempts": 2, "base_seconds": 0.2, "cap_seconds": 0.2}),
        }
    )
    applied = [variant(fixtures.load(t)) for t in ("checkout.session.completed", "payment_intent.succeeded")]
    retried = variant(fixtures.load("subscription_created", "legacy"))  # customer unknown: fails twice, then dead
    unknown = variant(fixtures.load("checkout.session.completed"))
    unknown["data"]["object"]["metadata"] = {"neuron_id": "00000000-0000-4000-8000-000000000000"}  # dead at once
    async with live_worker(s):
        for event in (*applied, retried, unknown):
            await store(conn, event)
            await queue.enqueue_event(redis, event["id"])

        async def settled():
            return all([await status(conn, e["id"]) == "ok" for e in applied]) and await conn.fetchval(
                "select count(*) = 2 from public.webhook_failures where dead_at is not null"
            )

        await wait_for(settled, timeout=20)
        beat = "last hour: applied=2 failed=3 retried=1 dead=2"
        await wait_for(lambda: _has(redis, s, beat), timeout=10)
        result = await aipt("status", "--json")
        text = await aipt("status")
    report = json.loads(result.stdout)
    assert beat in report["workers"]["heartbeat"]
    assert report["workers"]["last_hour"] == {"applied": 2, "failed": 3, "retried": 1, "dead": 2}
    assert "applied 2, failed 3, retried 1, dead 2" in text.stdout


async def _has(redis, s, text: str) -> bool:
    beat = await redis.get(queue.health_check_key(s))
    return beat is not None and text in beat.decode()


@pytest.mark.parametrize(
    ("env", "finding"),
    [
        ({"REDIS_URL": "bogus"}, "Redis is unreachable (ValueError"),  # malformed: no scheme
        ({"PORT": "not-a-port"}, "configuration: "),  # the settings themselves do not load
    ],
)
async def test_status_json_is_one_object_whatever_is_wrong(aipt, env, finding):
    result = await aipt("status", "--json", **env)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["healthy"] is False and any(line.startswith(finding) for line in report["attention"]), report
    assert "Future exception" not in result.stderr and "Traceback" not in result.stderr
