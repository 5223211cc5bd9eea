"""Prometheus metrics shared by the web and worker processes.

Counters and histograms live in the default registry of each process. The queue gauges describe the
whole system, not one process: only workers register them (register_worker) and refresh them from
Postgres and Redis, so the web process never exposes a stale zero. Names follow Prometheus
conventions: counters end in _total, durations are _seconds.
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

# --- web: ingest ---------------------------------------------------------------------------------
WEBHOOKS = Counter("aipt_webhooks_total", "Stripe webhooks received, by outcome.", ["outcome"])
WEBHOOK_SECONDS = Histogram(
    "aipt_webhook_duration_seconds",
    "Time to answer a Stripe webhook.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
ENQUEUE_FAILURES = Counter("aipt_enqueue_failures_total", "Accepted events the queue could not be told about.")

# --- worker: events ------------------------------------------------------------------------------
EVENTS = Counter("aipt_events_processed_total", "Event attempts by type and outcome.", ["event_type", "outcome"])
EVENT_SECONDS = Histogram(
    "aipt_event_processing_seconds",
    "Time to apply one event attempt.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
EVENT_ATTEMPTS = Histogram(
    "aipt_event_attempts",
    "Which attempt each processed event attempt was (1: the first delivery).",
    buckets=(1, 2, 3, 4, 5, 10),
)

# --- worker: cleanups ----------------------------------------------------------------------------
CLEANUP_DELETED = Counter(
    "aipt_cleanup_deleted_rows_total", "Rows deleted by the retention cleanups, by table.", ["table"]
)
CLEANUP_LAST_SUCCESS = Gauge(
    "aipt_cleanup_last_success_timestamp_seconds",
    "When a cleanup job last finished without error (Unix time).",
    ["job"],
    registry=None,
)

# --- worker: the queue as a whole (refreshed by every worker every metrics.refresh_seconds) -------
QUEUE_DEPTH = Gauge("aipt_queue_depth", "Jobs in the Redis queue (due now or deferred).", registry=None)
DEAD_EVENTS = Gauge("aipt_dead_events", "Dead events waiting for an operator (aipt dlq list).", registry=None)
RETRYING_EVENTS = Gauge("aipt_retrying_events", "Failed events with a retry scheduled.", registry=None)
OLDEST_PENDING = Gauge(
    "aipt_oldest_pending_age_seconds", "Age of the oldest pending (not yet applied) event; 0 when none.", registry=None
)

WORKER_ONLY = (CLEANUP_LAST_SUCCESS, QUEUE_DEPTH, DEAD_EVENTS, RETRYING_EVENTS, OLDEST_PENDING)
_lock = threading.Lock()
_worker_registered = False


def register_worker() -> None:
    """Expose the worker-only series in this process (idempotent: tests build many workers)."""
    global _worker_registered
    with _lock:
        if not _worker_registered:
            for collector in WORKER_ONLY:
                REGISTRY.register(collector)
            _worker_registered = True


def serve(port: int, host: str = "0.0.0.0"):
    """Serve the default registry as Prometheus text on host:port/metrics, in a thread; returns the server."""
    server, _thread = start_http_server(port, addr=host)
    return server


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
