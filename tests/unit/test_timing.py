"""Time and arithmetic without servers: the webhook limit's leases, a retry job that looks twice across
its time, durations, moments and cursors of the CLI, ages."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import typer

from ingest import limit


class Bucket:
    """The shared stripe_webhook bucket as f_check_rate_limit keeps it, in memory: a check takes n tokens
    when n are left (one round trip each), else refuses with a Retry-After."""

    def __init__(self, tokens: int, round_trip: float = 0.0):
        self.tokens, self.round_trip, self.checks = tokens, round_trip, []

    def acquire(self):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def fetchrow(self, _sql, take: int):
        await asyncio.sleep(self.round_trip)
        self.checks.append(take)
        if take <= self.tokens:
            self.tokens -= take
            return True, self.tokens, 0
        return False, self.tokens, 7


async def spend(webhooks: int, bucket: Bucket, lease: int = 10) -> tuple[limit.WebhookLimit, list]:
    wl = limit.WebhookLimit(bucket, lease)
    answers = [await wl.spend() for _ in range(webhooks)]
    if wl.check is not None:
        await asyncio.shield(wl.check)
    return wl, answers


async def test_leases_take_tokens_ahead_and_every_token_taken_is_spent_or_held():
    bucket = Bucket(2000)
    wl, answers = await spend(25, bucket)
    assert answers == [None] * 25
    assert 3 <= len(bucket.checks) <= 4 and all(take >= 10 for take in bucket.checks)
    assert sum(bucket.checks) - 25 == wl.tokens == 2000 - bucket.tokens - 25


async def test_near_an_empty_bucket_nothing_more_than_it_holds_gets_through():
    bucket = Bucket(12)
    wl, answers = await spend(20, bucket)
    assert answers[:12] == [None] * 12 and answers[12:] == [7] * 8  # the rest told to come back
    assert bucket.tokens == 0 and wl.tokens == 0


async def test_a_lease_that_lands_late_doubles_the_next_up_to_the_cap(monkeypatch):
    bucket = Bucket(100_000, round_trip=0.002)  # slower than spending half a lease
    wl, answers = await spend(400, bucket, lease=4)
    assert answers == [None] * 400
    assert max(bucket.checks) > 4 and max(bucket.checks) <= 4 * limit.MAX_GROWTH
    assert len(bucket.checks) < 400 / 4  # far fewer checks than leases of the first size would need


async def test_an_unspent_lease_expires_and_the_size_starts_over(monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(limit.time, "monotonic", lambda: clock["now"])
    bucket = Bucket(1000)
    wl, _ = await spend(3, bucket)
    held = wl.tokens
    assert held == 7
    clock["now"] += limit.LEASE_SECONDS + 1
    assert await wl.spend() is None
    # The 7 expired: a new lease of the first size was taken and one of it spent; the 7 are not kept.
    assert (wl.size, wl.tokens, bucket.checks[-1]) == (10, 9, 10)


def test_a_retry_job_that_looks_twice_across_its_time_still_runs():
    """consume_due_event saw the retry a hair before next_retry, event_state a hair after: the job is
    that retry, on time, and must run again at once rather than be dropped (it was, once, in CI)."""
    from worker.consume import _early_retry

    assert _early_retry(2, {"status": "error", "retry_in": -0.0004, "failures": 1})
    assert _early_retry(2, {"status": "error", "retry_in": 0.25, "failures": 1})
    assert not _early_retry(2, {"status": "error", "retry_in": None, "failures": 1})  # dead: no retry set
    assert not _early_retry(2, {"status": "error", "retry_in": -0.0004, "failures": 2})  # a stale job
    assert not _early_retry(2, {"status": "ok", "retry_in": None, "failures": 1})
    assert not _early_retry(None, {"status": "error", "retry_in": 0.25, "failures": 1})  # a job from before attempts


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1.5w", 907200)]
)
def test_durations(text, seconds):
    from aipt.cli.events import seconds as parse

    assert parse(text) == seconds


def test_moments_are_a_duration_ago_or_a_time_in_utc_unless_it_says():
    from aipt.cli.events import moment

    before = dt.datetime.now(dt.UTC)
    assert abs((before - moment("2h")) - dt.timedelta(hours=2)) < dt.timedelta(seconds=5)
    assert moment("2026-11-29T10:00") == dt.datetime(2026, 11, 29, 10, tzinfo=dt.UTC)
    assert moment("2026-11-29T10:00+02:00") == dt.datetime(2026, 11, 29, 8, tzinfo=dt.UTC)
    for bad in ("yesterday", "2h30", "-1d"):
        with pytest.raises(typer.BadParameter):
            moment(bad)


def test_a_cursor_is_the_last_row_seen_and_nothing_else_is_one():
    from aipt.cli.events import _cursor, _parse_cursor

    at = dt.datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=dt.UTC)
    assert _parse_cursor(_cursor({"received_at": at, "event_id": "evt_1"})) == (at, "evt_1")
    for bad in ("evt_1", "2026-11-29~", "soon~evt_1"):
        with pytest.raises(typer.BadParameter):
            _parse_cursor(bad)


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (12.9, "12s"), (245, "4m05s"), (11220, "3h07m"), (187200, "2d04h")]
)
def test_ages(seconds, text):
    from aipt.health import age

    assert age(seconds) == text
