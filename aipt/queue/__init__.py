"""The queue: the only code that knows arq (and Redis). Swapping arq touches this package alone.

Postgres holds the events; a job only says "look at event X now". The producer side (enqueue.py) rings
for events and reads what `aipt status` shows; the runner (runner.py, imported by the worker only) runs
the jobs a WorkerSpec (jobs.py) names, with what each needs passed in: the attempt a consume job was
rung for, the time a cron run was scheduled for. docs/architecture.md says what a swap would touch.
"""

from aipt.queue.enqueue import (
    CONSUME,
    Doorbell,
    add_counts,
    claim_seconds,
    close,
    connect,
    counts_last_hour,
    enqueue_event,
    enqueue_first_attempts,
    health_check_key,
    heartbeat,
    job_id,
    last_cron_run,
    note_cron_run,
    queue_depth,
    ring_now,
)
from aipt.queue.jobs import Cron, Defer, WorkerSpec
from aipt.queue.tally import Tally

__all__ = [
    "CONSUME",
    "Cron",
    "Defer",
    "Doorbell",
    "Tally",
    "WorkerSpec",
    "add_counts",
    "claim_seconds",
    "close",
    "connect",
    "counts_last_hour",
    "enqueue_event",
    "enqueue_first_attempts",
    "health_check_key",
    "heartbeat",
    "job_id",
    "last_cron_run",
    "note_cron_run",
    "queue_depth",
    "ring_now",
]
