"""`aipt events` and `aipt dlq` through the real `aipt` process: what operators see and do to events."""

from __future__ import annotations

import json

from aipt import db, fixtures
from aipt.queue import Tally
from tests.billing import LEGACY_CUSTOMER, USER, seed_catalogue, store, variant
from tests.ops import live_worker
from tests.servers import wait_for
from worker.consume import consume_event

SUB = "subscription_created"  # legacy: names only its customer, so it fails while the customer is unknown


async def failing(conn, aipt, redis, attempts: int, base_seconds: float = 3600) -> dict:
    """A legacy subscription event run once by the consume job: dead (attempts 1), or waiting about an hour
    for its retry, which the job enqueued for then."""
    s = aipt.settings.model_copy(
        update={
            "retry": aipt.settings.retry.model_copy(
                update={"attempts": attempts, "base_seconds": base_seconds, "cap_seconds": base_seconds}
            )
        }
    )
    event = variant(fixtures.load(SUB, "legacy"))
    await store(conn, event)
    assert await consume(s, redis, event["id"]) == ("dead" if attempts == 1 else "retry")
    return event


async def consume(s, redis, event_id: str, attempt: int = 1) -> str:
    """One run of the consume job, as the worker would run it for that attempt."""
    pool = await db.create_pool(s, min_size=0)
    try:
        ctx = {"settings": s, "pool": pool, "redis": redis, "tally": Tally()}
        return await consume_event(ctx, event_id, attempt)
    finally:
        await pool.close()


async def applied(conn, event: dict) -> dict:
    await store(conn, event)
    assert await conn.fetchval(
        "select public.apply_stripe_event($1, $2, $3::jsonb)", event["id"], event["type"], json.dumps(event)
    ) in ("ok", "skipped")
    return event


def rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_every_status_is_named_and_filterable_and_a_bogus_one_is_refused(aipt, conn, redis):
    await seed_catalogue(conn)
    pending = variant(fixtures.load("invoice.payment_failed"))
    await store(conn, pending)
    ok = await applied(conn, variant(fixtures.load("checkout.session.completed")))
    skipped = await applied(conn, variant(fixtures.load("invoice.paid", "legacy")))
    retrying = await failing(conn, aipt, redis, attempts=3)
    dead = await failing(conn, aipt, redis, attempts=1)
    # An event that failed once and then applied is ok, and shows no error any more.
    healed = await failing(conn, aipt, redis, attempts=3)
    await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)
    await conn.execute("update public.webhook_failures set next_retry = now() where event_id = $1", healed["id"])
    assert await consume(aipt.settings, redis, healed["id"], 2) == "ok"

    everything = {r["event_id"]: r for r in rows(await aipt("events", "list", "--json"))}
    assert {i: everything[i]["status"] for i in everything} == {
        pending["id"]: "pending",
        ok["id"]: "ok",
        skipped["id"]: "skipped",
        retrying["id"]: "retrying",
        dead["id"]: "dead",
        healed["id"]: "ok",
    }
    assert everything[healed["id"]]["last_error"] is None and everything[healed["id"]]["attempts"] == 1
    assert "user not known yet" in everything[dead["id"]]["last_error"]
    for state, expected in (("dead", [dead]), ("retrying", [retrying]), ("pending", [pending]), ("discarded", [])):
        listed = rows(await aipt("events", "list", "--status", state, "--json"))
        assert [r["event_id"] for r in listed] == [e["id"] for e in expected], state

    bogus = await aipt("events", "list", "--status", "bogus")
    assert bogus.exit_code == 2 and "'bogus' is not one of" in bogus.stderr and bogus.stdout == ""
    table = await aipt("events", "list", "--status", "discarded")
    assert (table.exit_code, table.stdout.strip()) == (0, "(no event matches)")


async def test_search_by_customer_user_object_and_time_and_page_with_a_cursor(aipt, conn):
    await seed_catalogue(conn)
    checkout = await applied(conn, variant(fixtures.load("checkout.session.completed")))
    intent = await applied(conn, variant(fixtures.load("payment_intent.succeeded")))
    legacy = variant(fixtures.load(SUB, "legacy"))
    await store(conn, legacy)
    await conn.execute(
        "update public.stripe_events set received_at = now() - interval '3 days' where id = $1", legacy["id"]
    )

    def ids(result) -> set[str]:
        return {r["event_id"] for r in rows(result)}

    pi = checkout["data"]["object"]["payment_intent"]
    assert ids(await aipt("events", "list", "--object", pi, "--json")) == {checkout["id"], intent["id"]}
    assert ids(await aipt("events", "list", "--customer", LEGACY_CUSTOMER, "--json")) == {legacy["id"]}
    # The current fixtures name the user in their metadata; the legacy one only through its customer.
    by_user = ids(await aipt("events", "list", "--user", USER, "--json"))
    assert {checkout["id"], intent["id"]} <= by_user and legacy["id"] not in by_user
    await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)
    assert legacy["id"] in ids(await aipt("events", "list", "--user", USER, "--json"))
    assert ids(await aipt("events", "list", "--until", "1d", "--json")) == {legacy["id"]}
    assert legacy["id"] not in ids(await aipt("events", "list", "--since", "2d", "--json"))
    bad_user = await aipt("events", "list", "--user", "someone")
    assert bad_user.exit_code == 2 and "not a user id" in bad_user.stderr

    for _ in range(3):
        await store(conn, variant(fixtures.load("invoice.payment_failed")))
    everything = rows(await aipt("events", "list", "--json"))
    assert len(everything) == 6
    seen, after = [], None
    while True:
        page = rows(await aipt("events", "list", "-n", "4", "--json", *(("--after", after) if after else ())))
        if not page:
            break
        seen += [r["event_id"] for r in page]
        after = page[-1]["cursor"]
    assert seen == [r["event_id"] for r in everything]  # every event once, newest first
    table = await aipt("events", "list", "-n", "2")
    assert "more: aipt events list ... --after" in table.stderr


async def test_show_prints_one_object_with_attempts_and_operators_actions(aipt, conn, redis):
    await seed_catalogue(conn)
    dead = await failing(conn, aipt, redis, attempts=1)
    done = await aipt("dlq", "discard", dead["id"], "--reason", "test data from another shop")
    assert done.exit_code == 0, done.output
    record = json.loads((await aipt("events", "show", dead["id"], "--json")).stdout)
    assert isinstance(record, dict) and record["status"] == "discarded"
    assert record["payload"]["id"] == dead["id"] and [h["attempt"] for h in record["history"]] == [1]
    assert [(a["action"], a["by"], a["reason"]) for a in record["actions"]] == [
        ("discard", "ops@test", "test data from another shop")
    ]
    table = await aipt("dlq", "show", dead["id"])
    assert table.exit_code == 0 and "operators' actions" in table.stdout and "ops@test" in table.stdout
    missing = await aipt("events", "show", "evt_nope")
    assert missing.exit_code == 1 and "error: no event evt_nope" in missing.stderr


async def test_dlq_list_counts_age_from_the_death_not_the_receipt(aipt, conn, redis):
    dead = await failing(conn, aipt, redis, attempts=1)
    await conn.execute(
        "update public.stripe_events set received_at = now() - interval '5 days' where id = $1", dead["id"]
    )
    await conn.execute(
        "update public.webhook_failures set first_failure = now() - interval '5 days', "
        "dead_at = now() - interval '2 hours' where event_id = $1",
        dead["id"],
    )
    [row] = rows(await aipt("dlq", "list", "--json"))
    assert row["event_id"] == dead["id"] and 7100 < row["dead_for"] < 7300
    assert rows(await aipt("dlq", "list", "--since", "1h", "--json")) == []
    assert "2h00m" in (await aipt("dlq", "list")).stdout


async def test_discard_closes_a_dead_event_for_good_with_who_and_why(aipt, conn, redis):
    dead = await failing(conn, aipt, redis, attempts=1)
    no_reason = await aipt("dlq", "discard", dead["id"])
    assert no_reason.exit_code == 2 and "--reason" in no_reason.stderr
    async with live_worker(aipt.settings):
        red = await aipt("status", "--json")
        assert red.exit_code == 1 and json.loads(red.stdout)["events"]["dead"] == 1
        done = await aipt("dlq", "discard", dead["id"], "-r", "customer deleted in Stripe")
        assert (done.exit_code, done.stdout.strip()) == (0, f"discarded {dead['id']}")
        green = await aipt("status", "--json")
        assert green.exit_code == 0, green.stdout
    assert rows(await aipt("dlq", "list", "--json")) == []
    row = await conn.fetchrow("select status, discarded_at, error from public.stripe_events where id = $1", dead["id"])
    assert row["status"] == "skipped" and row["discarded_at"] is not None
    assert row["error"] == "discarded by ops@test: customer deleted in Stripe"
    assert await conn.fetchval(
        "select resolved_at is not null from public.webhook_failures where event_id = $1", dead["id"]
    )
    again = await aipt("dlq", "discard", dead["id"], "-r", "twice")
    assert again.exit_code == 1 and "nothing to discard" in again.stderr
    # Never applied: the subscription it carried is not there, and a requeue is refused.
    assert await conn.fetchval("select count(*) from public.user_subscriptions") == 0
    assert (await aipt("dlq", "requeue", dead["id"])).exit_code == 1


async def test_bulk_forms_ask_first_and_say_when_nothing_matches(aipt, conn, redis):
    one, two = await failing(conn, aipt, redis, attempts=1), await failing(conn, aipt, redis, attempts=1)
    nothing = await aipt("dlq", "requeue", "--all", "--type", "invoice.payment_failed")
    assert (nothing.exit_code, nothing.stdout.strip()) == (
        0,
        "no dead event(s) of type invoice.payment_failed: nothing to requeue",
    )
    refused = await aipt("dlq", "discard", "--all", "-r", "cleanup", input="n\n")
    assert (
        refused.exit_code == 1 and "discard 2 dead event(s)?" in refused.stderr and "nothing changed" in refused.stderr
    )
    no_terminal = await aipt("dlq", "requeue", "--all")  # stdin closed: no answer is no
    assert no_terminal.exit_code == 1 and "pass --yes" in no_terminal.stderr
    assert len(rows(await aipt("dlq", "list", "--json"))) == 2
    dry = await aipt("dlq", "discard", "--all", "-r", "cleanup", "--dry-run")
    assert dry.exit_code == 0 and f"would discard 2 event(s): {one['id']} {two['id']}" in dry.stdout
    done = await aipt("dlq", "discard", "--all", "-r", "cleanup", input="y\n")
    assert done.exit_code == 0 and done.stdout.count("discarded evt_") == 2
    assert rows(await aipt("dlq", "list", "--json")) == []
    both = await aipt("dlq", "requeue", one["id"], "--all")
    assert both.exit_code == 2 and "not both" in both.stderr


async def test_requeue_waits_for_the_outcome_and_records_who(aipt, conn, redis):
    await seed_catalogue(conn)
    broken, fixed = await failing(conn, aipt, redis, attempts=1), None
    async with live_worker(aipt.settings):
        still = await aipt("dlq", "requeue", broken["id"], "--wait", "--timeout", "20")
        assert still.exit_code == 1, still.output
        assert f"requeued {broken['id']} (attempt 2)" in still.stdout
        assert f"{broken['id']}: dead after attempt 2: user not known yet" in still.stdout
        await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)
        fixed = await aipt("dlq", "requeue", "--all", "--yes", "--wait", "--timeout", "20")
        assert fixed.exit_code == 0, fixed.output
        assert f"{broken['id']}: ok" in fixed.stdout
    actions = await conn.fetch(
        "select action, actor, detail from public.stripe_event_actions where event_id = $1 order by id", broken["id"]
    )
    assert [(a["action"], a["actor"], json.loads(a["detail"])["attempt"]) for a in actions] == [
        ("requeue", "ops@test", 2),
        ("requeue", "ops@test", 3),
    ]
    assert await conn.fetchval("select count(*) from public.user_subscriptions") == 1
    not_dead = await aipt("dlq", "requeue", broken["id"], "evt_nope")
    assert not_dead.exit_code == 1
    assert "is not dead (status ok)" in not_dead.stderr and "no stripe event evt_nope" in not_dead.stderr


async def test_retry_runs_a_waiting_retry_now(aipt, conn, redis):
    await seed_catalogue(conn)
    event = await failing(conn, aipt, redis, attempts=3)
    due = await conn.fetchval("select next_retry - now() from public.webhook_failures where event_id = $1", event["id"])
    assert due.total_seconds() > 1000  # backoff of about an hour
    dead = await failing(conn, aipt, redis, attempts=1)
    refused = await aipt("dlq", "retry", dead["id"])
    assert refused.exit_code == 1 and "is not waiting for a retry (it is dead)" in refused.stderr
    assert "aipt dlq requeue" in refused.stderr  # the hint names the command that fits
    await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)
    async with live_worker(aipt.settings):
        done = await aipt("dlq", "retry", event["id"], "--wait", "--timeout", "20")
        assert done.exit_code == 0, done.output
        assert f"retried {event['id']} (attempt 2)" in done.stdout and f"{event['id']}: ok" in done.stdout
    [action] = await conn.fetch(
        "select action, actor from public.stripe_event_actions where event_id = $1", event["id"]
    )
    assert tuple(action) == ("retry", "ops@test")


async def test_replay_applies_an_applied_event_again_once(aipt, conn):
    await seed_catalogue(conn)
    checkout = await applied(conn, variant(fixtures.load("checkout.session.completed")))
    purchase = "select count(*) from public.user_purchases"
    assert await conn.fetchval(purchase) == 1
    await conn.execute("delete from public.user_purchases")  # a hand edit the replay repairs
    pending = await aipt("events", "replay", "evt_nope")
    assert pending.exit_code == 1 and "no stripe event evt_nope" in pending.stderr
    async with live_worker(aipt.settings):
        done = await aipt("events", "replay", checkout["id"], "--wait", "--timeout", "20")
        assert done.exit_code == 0, done.output
        assert f"{checkout['id']}: ok" in done.stdout
        again = await aipt("events", "replay", checkout["id"], "--wait", "--timeout", "20")
        assert again.exit_code == 0, again.output
    assert await conn.fetchval(purchase) == 1  # twice replayed, one purchase
    actions = await conn.fetch(
        "select action, detail from public.stripe_event_actions where event_id = $1 order by id", checkout["id"]
    )
    assert [(a["action"], json.loads(a["detail"])["was"]) for a in actions] == [("replay", "ok"), ("replay", "ok")]


async def test_verbose_anywhere_shows_the_traceback(aipt):
    quiet = await aipt("events", "show", "evt_nope")
    assert quiet.exit_code == 1 and "Traceback" not in quiet.stderr
    for args in (
        ("-v", "events", "show", "evt_nope"),
        ("events", "show", "evt_nope", "-v"),
        ("events", "-v", "show", "evt_nope"),
    ):
        loud = await aipt(*args)
        assert loud.exit_code == 1 and "Traceback" in loud.stderr and "CommandError: no event evt_nope" in loud.stderr


async def test_with_redis_down_a_requeue_is_committed_and_left_to_the_sweeper(aipt, conn, redis):
    dead = await failing(conn, aipt, redis, attempts=1)
    result = await aipt("dlq", "requeue", dead["id"], REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert result.exit_code == 0, result.output
    assert f"requeued {dead['id']} (attempt 2)" in result.stdout
    assert "is due but not enqueued" in result.stderr and "the sweeper will pick it up" in result.stderr
    # Due in Postgres: exactly what the sweeper enqueues.
    assert await conn.fetchval(
        "select next_retry <= now() from public.webhook_failures where event_id = $1", dead["id"]
    )
    async with live_worker(aipt.settings):

        async def applied_or_dead_again():
            return await conn.fetchval(
                "select failure_count = 2 from public.webhook_failures where event_id = $1", dead["id"]
            )

        await wait_for(applied_or_dead_again, timeout=20)  # the customer is still unknown: it ran and died again
