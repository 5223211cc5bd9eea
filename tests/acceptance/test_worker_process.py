"""The worker as a real process: killed mid-job it loses nothing; told to stop, it finishes its jobs."""

import asyncio
import json
import os
import signal
import subprocess
import sys

import asyncpg
import pytest

from aipt import fixtures, queue
from tests.billing import seed_catalogue, status, store
from tests.servers import wait_for


def start_worker(settings, stderr=None, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aipt", "worker"],
        env={
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "AIPT_QUEUE_NAME": settings.queue.name,
            "AIPT_QUEUE_POLL_DELAY_SECONDS": "0.05",
            "AIPT_QUEUE_JOB_TIMEOUT_SECONDS": "1",  # a killed job's claim lapses 11 s later
            "AIPT_SWEEPER_EVERY_SECONDS": "1",
            "LOG_FORMAT": "json",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=stderr or subprocess.DEVNULL,
        text=True,
    )


async def blocked_backend(conn, db_url: str) -> int | None:
    """The pid of a backend of this database waiting on a row lock (the worker's consume)."""
    return await conn.fetchval(
        """select pid from pg_stat_activity
           where datname = current_database() and wait_event_type = 'Lock' and pid <> pg_backend_pid()
           limit 1"""
    )


@pytest.fixture
async def held_event(conn, db_url, settings, redis):
    """A checkout event, enqueued, whose row another transaction holds locked."""
    await seed_catalogue(conn)
    event = fixtures.load("checkout.session.completed")
    await store(conn, event)
    await queue.enqueue_event(redis, event["id"])
    locker = await asyncpg.connect(db_url)
    await locker.execute("begin")
    await locker.execute("select 1 from public.stripe_events where id = $1 for update", event["id"])
    yield event, locker
    await locker.close()


async def test_a_worker_killed_mid_job_applies_the_event_exactly_once_after_restart(conn, db_url, settings, held_event):
    event, lock = held_event
    first = start_worker(settings)
    try:
        pid = await wait_for(lambda: blocked_backend(conn, db_url), timeout=15)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=5)
        # The process and its connection die together: its transaction never commits.
        await conn.execute("select pg_terminate_backend($1)", pid)
        await lock.execute("rollback")
        assert await status(conn, event["id"]) == "pending"
        second = start_worker(settings)
        try:
            await wait_for(lambda: _is_ok(conn, event["id"]), timeout=40, interval=0.2)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=20) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert await conn.fetchval("select count(*) from public.user_purchases") == 1
    assert await conn.fetchval("select count(*) from public.webhook_failures") == 0


async def test_sigterm_lets_the_running_job_finish(conn, settings, held_event):
    event, lock = held_event
    worker = start_worker(settings, stderr=subprocess.PIPE, AIPT_QUEUE_SHUTDOWN_GRACE_SECONDS="20")
    try:
        await wait_for(lambda: blocked_backend(conn, settings.database_url), timeout=15)
        worker.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert worker.poll() is None  # still finishing its job
        await lock.execute("rollback")
        assert await asyncio.to_thread(worker.wait, 20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert await status(conn, event["id"]) == "ok"
    assert await conn.fetchval("select count(*) from public.user_purchases") == 1
    with worker.stderr:
        lines = [json.loads(line) for line in worker.stderr.read().splitlines() if line.startswith("{")]
    started = [line for line in lines if line["event"] == "worker started"]
    assert started and started[0]["loop"] == "uvloop"  # as bench/worker.py measures it


async def test_a_missing_setting_stops_start_up_with_one_clear_line(settings):
    worker = start_worker(settings, stderr=subprocess.PIPE, DATABASE_URL="")
    _, err = worker.communicate(timeout=20)
    assert worker.returncode == 1
    assert err.strip().splitlines()[-1] == "error: DATABASE_URL is not set (required)"


async def _is_ok(conn, event_id):
    return await status(conn, event_id) == "ok"
