"""What aipt/queue relies on inside arq, pinned: an arq upgrade that moves any of it fails here, in CI,
instead of in production. Each pin names the code of ours that leans on it; after re-checking that
code against the new arq, update the pin.

arq is in maintenance-only mode upstream (DESIGN.md); these are the only places it is used beyond its
public API.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import textwrap

import arq
import pytest
from arq import constants, jobs
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker

from aipt.queue import runner


def digest(function) -> str:
    return hashlib.sha256(textwrap.dedent(inspect.getsource(function)).encode()).hexdigest()[:16]


def test_the_locked_arq_is_the_one_these_pins_were_read_from():
    assert arq.VERSION == "0.28.0", "a new arq: re-read every pin below against it, then update them"


@pytest.mark.parametrize(
    ("function", "pinned", "ours"),
    [
        # runner.Worker.start_jobs is a copy of it with the claim replaced by one script.
        (Worker.start_jobs, "a38f54558b8cd0e0", "aipt/queue/runner.py Worker.start_jobs"),
        # runner.Worker.record_health replaces it (same key, same TTL, our counts).
        (Worker.record_health, "f9fd382757f5f327", "aipt/queue/runner.py Worker.record_health"),
        # start_jobs (ours) gives a slot back through it.
        (Worker._release_sem_dec_counter_on_complete, "4a26f100774efecc", "aipt/queue/runner.py Worker.start_jobs"),
        # enqueue.enqueue_first_attempts' script makes the same keys, payload and dedup rule in one call.
        (ArqRedis.enqueue_job, "35e69611a21e0391", "aipt/queue/enqueue.py _ENQUEUE_MANY"),
    ],
)
def test_the_code_we_copy_or_replace_has_not_changed(function, pinned, ours):
    assert digest(function) == pinned, f"arq's {function.__qualname__} changed: re-check {ours}"


async def noop(ctx: dict) -> None:
    return None


async def test_the_worker_attributes_and_methods_we_use_are_there_with_their_shape():
    # async: arq's Worker takes the running loop (outside one it would make a loop nobody closes)
    w = Worker(
        functions=[arq.func(noop, name="noop")], redis_settings=RedisSettings(), burst=True, handle_signals=False
    )
    for name in (
        "sem",
        "job_counter",
        "_pool",
        "in_progress_timeout_s",
        "tasks",
        "_last_health_check",
        "health_check_interval",
        "health_check_key",
        "ctx",
        "queue_name",
        "expires_extra_ms",
        "job_serializer",
        "job_deserializer",
        "redis_settings",
        "max_jobs",
    ):
        assert hasattr(w, name), f"arq's Worker has no {name} any more: see aipt/queue/runner.py"
    assert list(inspect.signature(Worker.run_job).parameters) == ["self", "job_id", "score"]
    assert list(inspect.signature(Worker.start_jobs).parameters) == ["self", "job_ids"]
    assert inspect.iscoroutinefunction(Worker._poll_iteration) and inspect.iscoroutinefunction(Worker.main)
    assert hasattr(w, "loop") and isinstance(inspect.getattr_static(Worker, "pool"), property)
    assert "conn_retries" in {f.name for f in dataclasses.fields(RedisSettings)}


def test_the_keys_payload_and_ids_we_build_by_hand_are_arqs():
    # enqueue.py writes jobs itself (the batched script) and clears stale job keys; runner.py claims.
    assert (constants.job_key_prefix, constants.in_progress_key_prefix, constants.result_key_prefix) == (
        "arq:job:",
        "arq:in-progress:",
        "arq:result:",
    )
    assert isinstance(constants.expires_extra_ms, int)
    assert list(inspect.signature(jobs.serialize_job).parameters) == [
        "function_name",
        "args",
        "kwargs",
        "job_try",
        "enqueue_time_ms",
        "serializer",
    ]
    enqueue = inspect.signature(ArqRedis.enqueue_job).parameters
    assert {"_job_id", "_defer_until"} <= set(enqueue)
    # runner.cron_slot reads the slot from a unique cron's job id: '<name>:<unix ms>'.
    assert (
        "job_id = f'{cron_job.name}:{to_unix_ms(cron_job.next_run)}' if cron_job.unique else None"
        in inspect.getsource(Worker.run_cron)
    )


def test_the_log_lines_we_drop_are_still_arqs():
    source = inspect.getsource(__import__("arq.worker", fromlist=["x"]))
    for line in runner.JOB_LINES:
        assert repr(line)[1:-1] in source or line in source, f"arq logs no {line!r} any more: see runner.JOB_LINES"


def test_a_retry_defers_by_its_seconds():
    assert arq.Retry(defer=2.5).defer_score == 2500
