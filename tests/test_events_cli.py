"""`aipt events` and `aipt dlq`: what operators see and do, through the real CLI."""

import json

from aipt import fixtures, queue
from tests.billing import LEGACY_CUSTOMER, USER, seed_catalogue, status, store
from tests.conftest import run_worker


async def dead_event(conn, aipt, redis):
    """A legacy subscription event that died: its customer was never learned."""
    await seed_catalogue(conn)
    s = aipt.settings.model_copy(update={"retry": aipt.settings.retry.model_copy(update={"attempts": 2})})
    event = fixtures.load("subscription_created", "legacy")
    await store(conn, event)
    await queue.enqueue_event(redis, event["id"])
    await run_worker(s)
    return event, s


async def test_events_list_and_show(aipt, conn):
    await seed_catalogue(conn)
    for t in ("checkout.session.completed", "invoice.payment_failed"):
        await store(conn, fixtures.load(t))
    listed = await aipt("events", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert {r["event_type"] for r in rows} == {"checkout.session.completed", "invoice.payment_failed"}
    assert {r["status"] for r in rows} == {"pending"}
    only = json.loads((await aipt("events", "list", "--type", "invoice.payment_failed", "--json")).stdout)
    assert [r["event_type"] for r in only] == ["invoice.payment_failed"]
    assert json.loads((await aipt("events", "list", "--status", "ok", "--json")).stdout) == []

    shown = await aipt("events", "show", "evt_1uHbJxB7WZ01zgkW26X24teA", "--json")
    [record] = json.loads(shown.stdout)
    assert record["payload"]["type"] == "checkout.session.completed" and record["status"] == "pending"
    table = await aipt("events", "show", "evt_1uHbJxB7WZ01zgkW26X24teA")
    assert table.exit_code == 0 and "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY" in table.stdout


async def test_unknown_event_is_one_clear_line_and_exit_1(aipt):
    result = await aipt("events", "show", "evt_nope")
    assert result.exit_code == 1 and "error: no event evt_nope" in result.output


async def test_dlq_list_show_and_requeue_one(aipt, conn, redis):
    event, s = await dead_event(conn, aipt, redis)
    listed = await aipt("dlq", "list", "--json")
    [row] = json.loads(listed.stdout)
    assert (row["event_id"], row["attempts"], row["permanent"]) == (event["id"], 2, False)
    assert "user not known yet" in row["last_error"]
    assert json.loads((await aipt("dlq", "list", "--type", "invoice.payment_failed", "--json")).stdout) == []
    assert json.loads((await aipt("dlq", "list", "--since", "1h", "--json")).stdout) != []
    table = await aipt("dlq", "list")
    assert event["id"] in table.stdout

    shown = json.loads((await aipt("dlq", "show", event["id"], "--json")).stdout)[0]
    assert [h["attempt"] for h in shown["history"]] == [1, 2]

    await conn.execute("insert into public.stripe_customers values ($1, $2)", LEGACY_CUSTOMER, USER)
    requeued = await aipt("dlq", "requeue", event["id"])
    assert requeued.exit_code == 0 and f"requeued {event['id']} (attempt 3)" in requeued.stdout
    await run_worker(s)
    assert await status(conn, event["id"]) == "ok"
    assert json.loads((await aipt("dlq", "list", "--json")).stdout) == []


async def test_dlq_requeue_all_with_dry_run_and_filters(aipt, conn, redis):
    event, s = await dead_event(conn, aipt, redis)
    dry = await aipt("dlq", "requeue", "--all", "--dry-run")
    assert dry.exit_code == 0 and f"would requeue 1 event(s): {event['id']}" in dry.stdout
    other = await aipt("dlq", "requeue", "--all", "--type", "invoice.payment_failed", "--dry-run")
    assert "would requeue 0 event(s)" in other.stdout
    assert await conn.fetchval("select next_retry from public.webhook_failures") is None  # dry run changed nothing
    done = await aipt("dlq", "requeue", "--all", "--since", "1d")
    assert done.exit_code == 0 and "requeued" in done.stdout
    assert await conn.fetchval("select next_retry is not null from public.webhook_failures")


async def test_requeue_of_what_is_not_dead_says_so_and_exits_1(aipt, conn):
    await seed_catalogue(conn)
    event = fixtures.load("checkout.session.completed")
    await store(conn, event)
    result = await aipt("dlq", "requeue", event["id"], "evt_nope")
    assert result.exit_code == 1
    assert "is not dead" in result.output and "no stripe event evt_nope" in result.output
    assert await status(conn, event["id"]) == "pending"


async def test_requeue_needs_ids_or_all(aipt):
    assert (await aipt("dlq", "requeue")).exit_code == 2
    assert (await aipt("dlq", "requeue", "--since", "bogus", "--all")).exit_code != 0
