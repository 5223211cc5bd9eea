"""Retention cleanups (30_retention.sql, worker/cleanup.py) on rows backdated in a real database."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import asyncpg
import pytest
from arq.constants import in_progress_key_prefix
from prometheus_client import REGISTRY

from aipt import db, retention
from tests import content
from tests.ops import event, remaining
from tests.roles import acting_as
from tests.servers import make_settings, run_worker, wait_for
from worker import cleanup


@pytest.fixture
async def story(conn):
    """Every kind of event around the default retentions (events 90 days, failures 30 days)."""
    gone = {
        "ok, finished 91 days ago": await event(conn, "ok", 91, 91),
        "skipped 91 days ago": await event(conn, "skipped", 91, 91),
        "ok 91 days ago after a failure": await event(conn, "ok", 95, 91, {"resolved": 91}),
    }
    kept = {
        # A dead event nobody resolved never goes, however old: an unresolved payment problem stays.
        "dead 31 days, received 100 days ago": await event(conn, "error", 100, failure={"dead": 31}),
        "dead 400 days, received 500 days ago": await event(conn, "error", 500, failure={"dead": 400}),
        "ok 89 days ago": await event(conn, "ok", 89, 89),
        "received 120 days ago, finished 10 days ago": await event(conn, "ok", 120, 10, {"resolved": 10}),
        "pending for 200 days": await event(conn, "pending", 200),
        "retrying, next attempt soon": await event(conn, "error", 200, failure={"retry_in": 5}),
        "retrying, attempt overdue": await event(conn, "error", 200, failure={"retry_in": -60}),
        "dead only 29 days": await event(conn, "error", 100, failure={"dead": 29}),
        "dead 40 days, received 60 days ago": await event(conn, "error", 60, failure={"dead": 40}),
        "error with no failure row": await event(conn, "error", 200),
    }
    return gone, kept


async def test_stripe_events_go_when_finished_and_past_retention_and_never_before(conn, settings, story):
    gone, kept = story
    before_failures = await remaining(conn, "webhook_failures")
    outcome = await retention.run(settings, "stripe_events")
    assert outcome.status == "ok", outcome.note
    assert await remaining(conn) == set(kept.values())
    # A failure row goes with its event and only with it.
    gone_failures = before_failures - await remaining(conn, "webhook_failures")
    assert gone_failures == {gone["ok 91 days ago after a failure"]}
    assert outcome.counts == {"stripe_events": 3, "webhook_failures": 1}


async def test_batches_are_small_and_the_run_is_recorded_with_its_counts(conn, db_url, story):
    s = make_settings(db_url, cleanup={"batch_size": 1, "pause_seconds": 0})
    outcome = await retention.run(s, "stripe_events", run_by="test")
    assert outcome.counts == {"stripe_events": 3, "webhook_failures": 1}
    assert outcome.batches == 4  # three of one row each, then an empty one
    run = await conn.fetchrow("select * from public.cleanup_runs where id = $1", outcome.run_id)
    assert (run["job"], run["status"], run["batches"], run["run_by"]) == ("stripe_events", "ok", 4, "test")
    assert json.loads(run["counts"]) == outcome.counts and run["finished_at"] >= run["started_at"]


async def test_a_run_stops_at_its_time_limit_and_the_next_one_goes_on(conn, db_url, story):
    s = make_settings(db_url, cleanup={"batch_size": 1, "pause_seconds": 0})
    first = await retention.run(s, "stripe_events", max_seconds=0)
    assert first.status == "ok" and first.batches == 1 and "time limit" in first.note
    assert first.counts["stripe_events"] == 1
    second = await retention.run(s, "stripe_events")
    assert first.counts["stripe_events"] + second.counts["stripe_events"] == 3


async def test_the_dry_run_counts_exactly_what_the_run_deletes_and_deletes_nothing(conn, settings, story):
    for job in ("stripe_events", "webhook_failures"):
        before = (await remaining(conn), await remaining(conn, "webhook_failures"))
        preview = await retention.preview(conn, settings, job)
        assert (await remaining(conn), await remaining(conn, "webhook_failures")) == before
        assert preview.counts == (await retention.run(settings, job)).counts
    assert await conn.fetchval("select count(*) from public.cleanup_runs") == 2


async def test_failure_history_goes_30_days_after_the_event_succeeded_and_the_event_stays(conn, settings):
    old = await event(conn, "ok", 40, 31, {"resolved": 31})
    recent = await event(conn, "ok", 40, 29, {"resolved": 29})
    dead = await event(conn, "error", 200, failure={"dead": 100})
    retrying = await event(conn, "error", 200, failure={"retry_in": 5})
    outcome = await retention.run(settings, "webhook_failures")
    assert outcome.counts == {"webhook_failures": 1}
    assert await remaining(conn, "webhook_failures") == {recent, dead, retrying}
    assert await remaining(conn) == {old, recent, dead, retrying}


async def test_rate_limit_log_after_7_days_and_buckets_idle_for_30(conn, settings):
    await conn.execute(
        """insert into public.rate_limit_log (request_timestamp, endpoint_key, was_allowed, tokens_consumed, tokens_remaining)
           select now() - make_interval(days => d), 'search', true, 1, 0 from unnest(array[8, 8, 6]) d"""
    )
    await conn.execute(
        """insert into public.rate_limit_buckets (endpoint_key, bucket_key, tokens_remaining, last_refill, last_request)
           select 'search', 'user:' || d, 1, now() - make_interval(days => d), now() - make_interval(days => d)
           from unnest(array[31, 29]) d"""
    )
    assert (await retention.preview(conn, settings, "rate_limit")).counts == {
        "rate_limit_log": 2,
        "rate_limit_buckets": 1,
    }
    outcome = await retention.run(settings, "rate_limit")
    assert outcome.counts == {"rate_limit_log": 2, "rate_limit_buckets": 1}
    assert await conn.fetchval("select count(*) from public.rate_limit_log") == 1
    assert [r["bucket_key"] for r in await conn.fetch("select bucket_key from public.rate_limit_buckets")] == [
        "user:29"
    ]


async def test_soft_deleted_content_goes_after_90_days_when_the_guard_allows(conn, settings):
    old, recent, bought = await content.neuron(conn), await content.neuron(conn), await content.neuron(conn)
    holder = await content.bundle(conn, neurons=[old])
    for kind, content_id in (("bundle", holder), ("neuron", old), ("neuron", recent), ("neuron", bought)):
        assert await conn.fetchval(f"select public.f_soft_delete_{kind}($1)", content_id)
    await content.purchase(conn, neuron_id=bought)  # bought after its soft delete: the guard keeps it
    for kind, content_id, days in (
        ("bundle", holder, 91),
        ("neuron", old, 91),
        ("neuron", recent, 89),
        ("neuron", bought, 91),
    ):
        await content.backdate(conn, kind, content_id, days)
    expected = {"bundles": 1, "neurons": 1, "bundle_neurons": 1}
    assert (await retention.preview(conn, settings, "deleted_content")).counts == expected
    assert (await retention.run(settings, "deleted_content")).counts == expected
    assert {r["id"] for r in await conn.fetch("select id from public.neurons")} == {recent, bought}


async def test_retention_days_come_from_the_settings(conn, db_url):
    young = await event(conn, "ok", 10, 10)
    older = await event(conn, "ok", 20, 20)
    s = make_settings(db_url, cleanup={"stripe_events_days": 15})
    assert (await retention.run(s, "stripe_events")).counts["stripe_events"] == 1
    assert await remaining(conn) == {young}
    assert older not in await remaining(conn)


# --- one run at a time, once per slot ------------------------------------------------------------

SLOT_MS = 1_790_000_000_000


SLOT = dt.datetime.fromtimestamp(SLOT_MS / 1000, dt.UTC)


async def test_two_workers_racing_for_one_cron_slot_run_it_once(conn, settings, story):
    [cron] = [c for c in cleanup.schedules(settings) if c.name == "cleanup:stripe_events"]
    ctx = {"settings": settings}
    results = await asyncio.gather(cron.run(ctx, SLOT), cron.run(ctx, SLOT))
    assert sorted(r["status"] for r in results) == ["ok", "refused"]
    # Later, a worker whose clock lags enqueues the same slot again: still refused.
    late = await cron.run(ctx, SLOT)
    assert late["status"] == "refused" and "ran already" in late["note"]
    runs = await conn.fetch("select slot, status, counts from public.cleanup_runs")
    assert len(runs) == 1 and runs[0]["status"] == "ok"
    assert runs[0]["slot"] == dt.datetime.fromtimestamp(SLOT_MS / 1000, dt.UTC)
    assert json.loads(runs[0]["counts"]) == {"stripe_events": 3, "webhook_failures": 1}


async def test_two_burst_workers_and_a_late_enqueue_run_a_cron_slot_once(conn, settings, redis, story):
    job_id = f"cleanup:stripe_events:{SLOT_MS}"
    assert await redis.enqueue_job("cleanup:stripe_events", _job_id=job_id) is not None
    assert await redis.enqueue_job("cleanup:stripe_events", _job_id=job_id) is None  # arq's unique cron
    await asyncio.gather(run_worker(settings), run_worker(settings))
    # arq keeps a finished cron's claim for 60 s and no result (keep_result 0): a worker whose clock
    # lags more than that enqueues the same slot again, and arq alone would run it again.
    await redis.delete(in_progress_key_prefix + job_id)
    assert await redis.enqueue_job("cleanup:stripe_events", _job_id=job_id) is not None
    await run_worker(settings)
    assert [r["status"] for r in await conn.fetch("select status from public.cleanup_runs")] == ["ok"]


async def test_a_run_in_progress_holds_its_lease_and_a_killed_one_is_closed_as_abandoned(conn, db_url, settings, story):
    holder = await asyncpg.connect(db_url)
    try:
        run_id, refused = await holder.fetchrow(db.queries["cleanup_begin"], "stripe_events", None, "psql", 60)
        assert run_id is not None and refused is None
    finally:
        await holder.close()  # the call is over, and its connection: nothing is held by a session
    outcome = await retention.run(settings, "stripe_events")
    assert outcome.status == "refused" and "in progress" in outcome.note and f"run {run_id}" in outcome.note
    assert len(await remaining(conn)) == 13
    # The holder died without finishing: its lease runs out, and the next run takes over.
    await conn.execute("update public.cleanup_runs set lease_until = now() - interval '1 second' where id = $1", run_id)
    outcome = await retention.run(settings, "stripe_events")
    assert outcome.status == "ok" and outcome.counts["stripe_events"] == 3
    killed = await conn.fetchrow("select status, error, finished_at from public.cleanup_runs where id = $1", run_id)
    assert killed["status"] == "abandoned" and killed["finished_at"] is not None
    # A batch of the abandoned run changes nothing and says why.
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="not running any more"):
        await conn.fetch(db.queries["cleanup_webhook_failures"], 30, 10, False, run_id)


async def test_a_lease_taken_through_the_api_ends_with_its_call(conn, db_url, settings, story):
    """cleanup_begin called as service_role through PostgREST (a pooled connection that lives on) no
    longer holds anything on that connection: the worker's run after it is refused only by the lease."""
    pooled = await asyncpg.connect(db_url)
    try:
        async with acting_as(pooled, "service_role"):
            run_id, _ = await pooled.fetchrow(db.queries["cleanup_begin"], "rate_limit", None, "api", 1)
            await pooled.fetch(db.queries["cleanup_finish"], run_id, None)
        assert (
            await pooled.fetchval(
                "select count(*) from pg_locks where pid = pg_backend_pid() and locktype = 'advisory'"
            )
            == 0
        )
        assert (await retention.run(settings, "rate_limit")).status == "ok"
    finally:
        await pooled.close()


@pytest.mark.parametrize(("job", "arguments", "floor"), [
    ("cleanup_stripe_events", (-1, -1, 1000), "p_event_days must be at least 7"),
    ("cleanup_stripe_events", (6, 30, 1000), "p_event_days must be at least 7"),
    ("cleanup_stripe_events", (90, 0, 1000), "p_failure_days must be at least 1"),
    ("cleanup_webhook_failures", (0, 1000), "p_failure_days must be at least 1"),
    ("cleanup_rate_limit", (7, 0, 1000), "p_bucket_days must be at least 1"),
    ("cleanup_rate_limit", (7, 30, 0), "p_batch_size must be at least 1"),
])  # fmt: skip
async def test_retention_below_its_floor_is_refused_and_deletes_nothing(conn, story, job, arguments, floor):
    before = await remaining(conn), await remaining(conn, "webhook_failures")
    for dry_run in (True, False):
        with pytest.raises(asyncpg.InvalidParameterValueError, match=floor):
            await conn.fetch(db.queries[job], *arguments, dry_run, None)
    assert (await remaining(conn), await remaining(conn, "webhook_failures")) == before


def test_settings_refuse_a_retention_below_the_floor(db_url):
    from aipt import settings as settings_mod

    with pytest.raises(ValueError, match="stripe_events_days"):
        settings_mod.Cleanup(**{**make_settings(db_url).cleanup.model_dump(), "stripe_events_days": 6})


async def test_a_cancelled_run_is_closed_as_an_error_with_its_exact_counts_and_frees_the_lock(conn, db_url, story):
    # What arq does at a job timeout or a worker stopping: cancel the task, here during a pause.
    s = make_settings(db_url, cleanup={"batch_size": 1, "pause_seconds": 5})
    task = asyncio.create_task(retention.run(s, "stripe_events"))
    await wait_for(lambda: conn.fetchval("select batches = 1 from public.cleanup_runs"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    run = await conn.fetchrow("select status, error, counts from public.cleanup_runs")
    assert run["status"] == "error" and run["error"].startswith("cancelled")
    assert json.loads(run["counts"])["stripe_events"] == 13 - len(await remaining(conn)) == 1
    assert (await retention.run(make_settings(db_url), "stripe_events")).status == "ok"


async def test_a_failing_batch_is_recorded_as_an_error(conn, db_url, settings, story):
    # A trigger that refuses deletes stands in for anything the database refuses mid-run.
    await conn.execute(
        """create function pg_temp.refuse() returns trigger language plpgsql as $$
           begin raise exception 'deletes refused for the test'; end $$"""
    )
    await conn.execute(
        "create trigger refuse before delete on public.stripe_events for each row execute function pg_temp.refuse()"
    )
    outcome = await retention.run(settings, "stripe_events")
    assert outcome.status == "error" and "deletes refused" in outcome.note
    run = await conn.fetchrow("select status, error from public.cleanup_runs where id = $1", outcome.run_id)
    assert run["status"] == "error" and "deletes refused" in run["error"]
    assert len(await remaining(conn)) == 13


async def test_deletions_are_counted_in_metrics_by_table(conn, settings, story):
    def deleted(table):
        return REGISTRY.get_sample_value("aipt_cleanup_deleted_rows_total", {"table": table}) or 0

    before = {t: deleted(t) for t in ("stripe_events", "webhook_failures")}
    await retention.run(settings, "stripe_events")
    assert {t: deleted(t) - before[t] for t in before} == {"stripe_events": 3, "webhook_failures": 1}


# --- schedule and rights -------------------------------------------------------------------------


def test_each_job_is_a_unique_daily_cron_at_its_setting_and_off_disables_it(db_url):
    s = make_settings(db_url, cleanup={"stripe_events_at": "02:05", "rate_limit_at": "off"})
    crons = {c.name: c for c in cleanup.schedules(s)}
    assert set(crons) == {"cleanup:stripe_events", "cleanup:webhook_failures", "cleanup:deleted_content"}
    c = crons["cleanup:stripe_events"]
    assert (c.daily_at, c.every_seconds) == ((2, 5), None)
    # The queue holds every job's claim for the longest timeout + 10 s: a cron must not lengthen it.
    assert c.timeout == s.queue.job_timeout_seconds
    assert retention.time_limit(s) <= s.queue.job_timeout_seconds - 5


@pytest.mark.parametrize("role", ["anon", "authenticated"])
async def test_only_admins_run_cleanups(conn, role):
    async with acting_as(conn, role, user_id=uuid.uuid4() if role == "authenticated" else None):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("select * from public.cleanup_stripe_events(p_dry_run => true)")
    async with acting_as(conn, "service_role"):
        assert len(await conn.fetch("select * from public.cleanup_stripe_events(p_dry_run => true)")) == 2
    async with acting_as(conn, "authenticated", user_id=uuid.uuid4(), admin=True):
        assert len(await conn.fetch("select * from public.cleanup_rate_limit(p_dry_run => true)")) == 2
        assert await conn.fetch("select * from public.cleanup_runs") == []


async def test_cleanup_functions_are_locked_down(conn):
    rows = await conn.fetch(
        """select p.oid::regprocedure::text as sig, p.proconfig, p.prosecdef,
                  pg_catalog.has_function_privilege('anon', p.oid, 'execute') as anon_exec
           from pg_catalog.pg_proc p
           where p.pronamespace = 'public'::regnamespace and p.proname ~ '^_?cleanup_'"""
    )
    assert len(rows) == 9  # the eight of 30_retention.sql (cleanup_begin in its new signature) and _cleanup_floor
    for r in rows:
        assert r["proconfig"] == ['search_path=""'] and not r["anon_exec"], r["sig"]
        assert r["prosecdef"] == (not r["sig"].startswith("_")), r["sig"]


# --- aipt cleanup ---------------------------------------------------------------------------------


async def test_aipt_cleanup_dry_run_prints_what_would_go_then_the_run_deletes_it(aipt, conn, story):
    gone, kept = story
    dry = await aipt("cleanup", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    previews = {o["job"]: o for o in json.loads(dry.stdout)}
    assert set(previews) == {"stripe_events", "webhook_failures", "rate_limit", "deleted_content"}
    assert previews["stripe_events"]["status"] == "dry_run"
    assert previews["stripe_events"]["counts"] == {"stripe_events": 3, "webhook_failures": 1}
    assert len(await remaining(conn)) == 13 and await conn.fetchval("select count(*) from public.cleanup_runs") == 0
    text = await aipt("cleanup", "--dry-run", "--job", "stripe_events")
    assert text.stdout.strip() == "stripe_events: would delete stripe_events 3, webhook_failures 1"

    done = await aipt("cleanup", "--job", "stripe_events", "--job", "rate_limit")
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines() == [
        "stripe_events: deleted stripe_events 3, webhook_failures 1",
        "rate_limit: deleted rate_limit_log 0, rate_limit_buckets 0",
    ]
    assert await remaining(conn) == set(kept.values())
    runs = await conn.fetch("select job, status, run_by from public.cleanup_runs order by id")
    assert [(r["job"], r["status"]) for r in runs] == [("stripe_events", "ok"), ("rate_limit", "ok")]
    assert all(r["run_by"].startswith("cli:") for r in runs)
    assert (await aipt("cleanup", "--job", "nonsense")).exit_code == 2
