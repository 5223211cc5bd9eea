"""The queue package without a server: job ids, what a cron becomes, slots, Defer, the tally."""

from __future__ import annotations

import datetime as dt

import pytest
from arq import Retry

from aipt import queue
from aipt.queue import runner, tally
from aipt.settings import load


def test_a_job_id_names_the_event_and_the_attempt():
    assert queue.job_id("evt_1", 3) == "stripe:evt_1:3"


@pytest.mark.parametrize(
    ("job_id", "slot"),
    [
        ("cron:cleanup:stripe_events:1790000000000", dt.datetime(2026, 9, 21, 14, 13, 20, tzinfo=dt.UTC)),
        ("cleanup:stripe_events:1790000000000", dt.datetime(2026, 9, 21, 14, 13, 20, tzinfo=dt.UTC)),
        ("cleanup:by-hand", None),
        (None, None),
    ],
)
def test_a_cron_slot_is_the_time_in_its_job_id(job_id, slot):
    assert runner.cron_slot(job_id) == slot


async def nothing(ctx, slot):
    return slot


@pytest.mark.parametrize(
    ("every", "when"),
    [
        (15, {"second": {0, 15, 30, 45}, "minute": None}),
        (60, {"second": {0}, "minute": set(range(60))}),
        (300, {"second": {0}, "minute": {0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55}}),
    ],
)
def test_a_cron_every_n_seconds_fits_the_clock(every, when):
    c = runner._cron(queue.Cron("sweeper", nothing, timeout=30, every_seconds=every, at_startup=True))
    assert (c.name, c.unique, c.run_at_startup, c.timeout_s) == ("sweeper", True, True, 30)
    assert (c.second, c.minute) == (when["second"], when["minute"])


def test_a_daily_cron_runs_at_its_minute():
    c = runner._cron(queue.Cron("cleanup:rate_limit", nothing, timeout=45, daily_at=(4, 10)))
    assert (c.hour, c.minute, c.second, c.unique, c.run_at_startup) == ({4}, {10}, {0}, True, False)


def test_a_cron_needs_exactly_one_schedule():
    with pytest.raises(ValueError, match="give every_seconds or daily_at"):
        queue.Cron("x", nothing, timeout=1)
    with pytest.raises(ValueError):
        queue.Cron("x", nothing, timeout=1, every_seconds=60, daily_at=(1, 0))


async def test_a_cron_run_gets_its_slot_and_a_deferred_job_becomes_arqs_retry():
    c = runner._cron(queue.Cron("sweeper", nothing, timeout=30, every_seconds=60))
    assert await c.coroutine({"job_id": "cron:sweeper:1790000000000"}) == dt.datetime(
        2026, 9, 21, 14, 13, 20, tzinfo=dt.UTC
    )

    async def later(ctx, event_id, attempt):
        raise queue.Defer(2.5)

    job = runner._job("consume_event", later)
    assert (job.name, job.max_tries) == ("consume_event", 1000)
    with pytest.raises(Retry) as retried:
        await job.coroutine({}, "evt_1", 1)
    assert retried.value.defer_score == 2500


def test_the_claim_lasts_the_job_timeout_plus_arqs_ten_seconds():
    s = load().model_copy(update={"database_url": "x", "redis_url": "redis://nowhere:1"})
    assert queue.claim_seconds(s) == s.queue.job_timeout_seconds + 10


def test_the_tally_counts_the_last_hour_and_sends_each_count_once(monkeypatch):
    clock = {"now": 1_000_000 * 60.0}
    monkeypatch.setattr(tally.time, "time", lambda: clock["now"])
    t = queue.Tally()
    t.count("applied")
    t.count("failed", "dead")
    clock["now"] += 30 * 60
    t.count("applied", "retried")
    assert t.last_hour() == {"applied": 2, "failed": 1, "retried": 1, "dead": 1}
    clock["now"] += 45 * 60  # the first minute is more than an hour old now
    assert t.last_hour() == {"applied": 1, "failed": 0, "retried": 1, "dead": 0}
    unsent = t.take_unsent()
    assert sum(sum(c.values()) for c in unsent.values()) == 5 and t.take_unsent() == {}
    t.give_back(unsent)  # Redis refused them: they go with the next heartbeat
    assert t.take_unsent() == unsent


@pytest.mark.parametrize(
    ("outcome", "attempt", "kinds"),
    [
        ("ok", 1, {"applied": 1}),
        ("skipped", 2, {"applied": 1, "retried": 1}),
        ("retry", 1, {"failed": 1}),
        ("dead", 3, {"failed": 1, "dead": 1, "retried": 1}),
        ("not_due", 2, {}),
        ("duplicate", 1, {}),
    ],
)
def test_what_each_outcome_counts(outcome, attempt, kinds):
    from worker.consume import _tally

    ctx = {"tally": queue.Tally()}
    _tally(ctx, outcome, attempt)
    assert {k: v for k, v in ctx["tally"].last_hour().items() if v} == kinds
