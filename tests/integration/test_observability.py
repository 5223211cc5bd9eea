"""Metrics move when events flow (web /metrics, the worker's counters, gauges and port); event log lines carry their fields."""

from __future__ import annotations

import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aipt import fixtures, metrics, queue
from aipt.queue import Tally
from tests.billing import seed_catalogue, store
from tests.ops import event, live_worker
from tests.servers import captured_logs, make_settings, post_event, run_worker, wait_for
from worker import gauges
from worker.consume import consume_event


def sample(text: str, name: str, **labels) -> float:
    """One sample of a Prometheus text page (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def registry_value(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_web_metrics_count_webhooks_by_outcome_and_time_them(client):
    before = (await client.get("/metrics")).text
    event = fixtures.load("checkout.session.completed")
    assert (await post_event(client, event)).status_code == 200
    assert (await post_event(client, event)).status_code == 200  # redelivery
    assert (await post_event(client, event, secret="whsec_wrong")).status_code == 400
    after = (await client.get("/metrics")).text
    for outcome, n in (("accepted", 1), ("duplicate", 1), ("rejected", 1)):
        assert (
            sample(after, "aipt_webhooks_total", outcome=outcome)
            - sample(before, "aipt_webhooks_total", outcome=outcome)
            == n
        )
    assert (
        sample(after, "aipt_webhook_duration_seconds_count") - sample(before, "aipt_webhook_duration_seconds_count")
        == 3
    )


def test_the_web_process_shows_no_queue_gauges():
    """They belong to workers: a web process would show a misleading 0 (this test process ran workers)."""
    code = "import ingest.app; from aipt import metrics; print(metrics.render()[0].decode())"
    page = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "aipt_webhooks_total" in page and "aipt_dead_events" not in page and "aipt_queue_depth" not in page


async def test_worker_counts_events_by_type_and_outcome_attempts_and_latency(conn, settings, redis):
    await seed_catalogue(conn)
    ok = fixtures.load("checkout.session.completed")
    failing = fixtures.load("subscription_created", "legacy")  # its customer is unknown: fails, retried
    labels = dict(event_type="checkout.session.completed", outcome="ok")
    before = {
        "ok": registry_value("aipt_events_processed_total", **labels),
        "retry": registry_value(
            "aipt_events_processed_total", event_type="customer.subscription.created", outcome="retry"
        ),
        "attempts": registry_value("aipt_event_attempts_count"),
        "second": registry_value("aipt_event_attempts_bucket", le="2.0")
        - registry_value("aipt_event_attempts_bucket", le="1.0"),
        "seconds": registry_value("aipt_event_processing_seconds_count"),
    }
    for e in (ok, failing):
        await store(conn, e)
        await queue.enqueue_event(redis, e["id"])
    await run_worker(settings.model_copy(update={"retry": settings.retry.model_copy(update={"attempts": 2})}))
    assert registry_value("aipt_events_processed_total", **labels) - before["ok"] == 1
    assert (
        registry_value("aipt_events_processed_total", event_type="customer.subscription.created", outcome="retry")
        - before["retry"]
        == 1
    )
    assert registry_value("aipt_event_attempts_count") - before["attempts"] == 3  # ok, retry, dead
    second = registry_value("aipt_event_attempts_bucket", le="2.0") - registry_value(
        "aipt_event_attempts_bucket", le="1.0"
    )
    assert second - before["second"] == 1
    assert registry_value("aipt_event_processing_seconds_count") - before["seconds"] == 3


async def test_worker_gauges_and_its_metrics_port(conn, settings, pool, redis):
    await event(conn, "error", 2, failure={"dead": 1})
    await event(conn, "error", 2, failure={"retry_in": 30})
    await event(conn, "pending", 0.01)
    await redis.enqueue_job("consume_event", "evt_not_there", _job_id="stripe:evt_not_there:1", _defer_by=3600)
    values = await gauges.refresh({"settings": settings, "pool": pool, "redis": redis})
    assert (values["dead"], values["retrying"], values["queue_depth"]) == (1, 1, 1)
    assert 850 < values["oldest_pending_seconds"] < 900

    metrics.register_worker()
    server = metrics.serve(0, "127.0.0.1")
    try:
        async with httpx.AsyncClient() as http:
            page = (await http.get(f"http://127.0.0.1:{server.server_port}/metrics")).text
    finally:
        server.shutdown()
        server.server_close()
    assert sample(page, "aipt_dead_events") == 1 and sample(page, "aipt_retrying_events") == 1
    assert sample(page, "aipt_queue_depth") == 1 and 850 < sample(page, "aipt_oldest_pending_age_seconds") < 900


async def test_a_running_worker_keeps_its_gauges_fresh(conn, db_url):
    s = make_settings(db_url, metrics={"refresh_seconds": 0.05})
    metrics.DEAD_EVENTS.set(-1)
    await event(conn, "error", 2, failure={"dead": 1})
    async with live_worker(s):
        await wait_for(lambda: _dead_gauge(1))
        await event(conn, "error", 2, failure={"dead": 1})
        await wait_for(lambda: _dead_gauge(2))


async def _dead_gauge(n: int) -> bool:
    return registry_value("aipt_dead_events") == n


async def test_every_log_line_about_an_event_carries_id_type_attempt_and_duration(conn, settings, pool, redis):
    await seed_catalogue(conn)
    ok = fixtures.load("checkout.session.completed")
    failing = fixtures.load("subscription_created", "legacy")
    for e in (ok, failing):
        await store(conn, e)
    ctx = {
        "settings": settings.model_copy(update={"retry": settings.retry.model_copy(update={"attempts": 2})}),
        "pool": pool,
        "redis": redis,
        "tally": Tally(),
    }
    with captured_logs() as logs:
        await consume_event(ctx, ok["id"], 1)  # applied
        await consume_event(ctx, ok["id"], 1)  # not due: done
        await consume_event(ctx, failing["id"], 1)  # retry scheduled
        await conn.execute("update public.webhook_failures set next_retry = now()")
        await consume_event(ctx, failing["id"], 2)  # dead
        await consume_event(ctx, "evt_gone", 1)  # no such event
    about_events = [e for e in logs if "event_id" in e]
    assert {e["event"] for e in about_events} >= {
        "event ok",
        "event not due (done, dead, or its retry is later)",
        "event failed; retry scheduled",
        "event dead: no more automatic attempts",
        "event not due: no such event",
    }
    for e in about_events:
        assert {"event_id", "event_type", "attempt", "duration_ms"} <= e.keys(), e
        if e["event_id"] != "evt_gone":
            assert e["event_type"] and e["attempt"] in (1, 2), e
    [dead] = [e for e in about_events if e["event"].startswith("event dead")]
    assert (dead["event_type"], dead["attempt"]) == ("customer.subscription.created", 2)
