"""Prometheus metrics shared by the web and worker processes."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

WEBHOOKS = Counter("aipt_webhooks_total", "Stripe webhooks received, by outcome.", ["outcome"])
WEBHOOK_SECONDS = Histogram(
    "aipt_webhook_duration_seconds", "Time to answer a Stripe webhook.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
ENQUEUE_FAILURES = Counter("aipt_enqueue_failures_total", "Accepted events the queue could not be told about.")
EVENTS = Counter("aipt_events_processed_total", "Event attempts by type and outcome.", ["event_type", "outcome"])
EVENT_SECONDS = Histogram(
    "aipt_event_processing_seconds", "Time to apply one event attempt.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)

CLEANUP_DELETED = Counter("aipt_cleanup_deleted_rows_total", "Rows deleted by the retention cleanups, by table.", ["table"])


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
