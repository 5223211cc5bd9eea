"""The operator's toolkit through the real `aipt` process: fixing causes without psql, test events like
`stripe trigger`, help that names what options take, and the drill that closes an incident."""

from __future__ import annotations

import json
import re

import stripe

from aipt import fixtures, queue
from tests import content
from tests.billing import LEGACY_CUSTOMER, USER, seed_catalogue, status, store, variant
from tests.ops import live_worker
from tests.receiver import Receiver
from tests.servers import SECRET


def rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_customers_map_by_id_or_email_and_refuse_another_users_customer(aipt, conn):
    alice, bob = await content.user(conn, "alice@shop.test"), await content.user(conn, "bob@shop.test")
    mapped = await aipt("customers", "map", LEGACY_CUSTOMER, "Alice@Shop.test")
    assert mapped.exit_code == 0 and f"{LEGACY_CUSTOMER} mapped → {alice}" in mapped.stdout, mapped.output
    taken = await aipt("customers", "map", LEGACY_CUSTOMER, str(bob))
    assert taken.exit_code == 1 and f"is mapped to user {alice} already" in taken.stderr
    assert "aipt customers map --replace" in taken.stderr  # the hint names the command, not SQL
    replaced = await aipt("customers", "map", LEGACY_CUSTOMER, str(bob), "--replace")
    assert replaced.exit_code == 0 and "replacing the previous user" in replaced.stdout
    [row] = rows(await aipt("customers", "list", "--json"))
    assert (row["customer_id"], row["user_id"], row["email"]) == (LEGACY_CUSTOMER, str(bob), "bob@shop.test")
    for who, message in (
        ("nobody@shop.test", "no user with e-mail nobody@shop.test"),
        ("nobody", "neither a user id (uuid) nor an e-mail address"),
    ):
        refused = await aipt("customers", "map", "cus_Other1", who)
        assert refused.exit_code == 1 and message in refused.stderr
    recorded = await conn.fetch("select actor from public.stripe_event_actions where action = 'map_customer'")
    assert [r["actor"] for r in recorded] == ["ops@test", "ops@test"]


async def test_plans_list_and_add(aipt, conn):
    await seed_catalogue(conn)
    added = await aipt("plans", "add", "price_1NewTierTwo", "2", "--name", "Initiate yearly")
    assert added.exit_code == 0, added.output
    plans = {p["name"]: p for p in rows(await aipt("plans", "list", "--json"))}
    assert plans["Initiate yearly"]["tier"] == 2 and plans["Initiate yearly"]["prices"] == ["price_1NewTierTwo"]
    again = await aipt("plans", "add", "price_1NewTierTwo", "3")
    assert again.exit_code == 1 and "is mapped already" in again.stderr
    assert (await aipt("plans", "add", "price_x", "-1")).exit_code == 2  # a tier is 0 or more
    assert "price_1NewTierTwo" in (await aipt("plans", "list")).stdout


async def test_content_list_live_and_deleted(aipt, conn):
    live = await content.neuron(conn, "live-one")
    gone = await content.bundle(conn, "gone-one")
    assert (await aipt("content", "soft-delete", gone, "--reason", "retired")).exit_code == 0
    listed = rows(await aipt("content", "list", "--json"))
    assert [(r["kind"], r["id"], r["slug"]) for r in listed] == [("neuron", str(live), "live-one")]
    [deleted] = rows(await aipt("content", "list", "--deleted", "--json"))
    assert (deleted["kind"], deleted["id"], deleted["deletion_reason"]) == ("bundle", str(gone), "retired")
    assert deleted["hard_delete_from"] > deleted["deleted_at"]
    assert "live-one" in (await aipt("content", "list")).stdout


async def test_send_test_event_overrides_payload_files_and_names(aipt, tmp_path):
    receiver = await Receiver().start()
    try:
        url = receiver.url
        sent = await aipt(
            "send-test-event",
            "invoice.payment_succeeded",
            "--api",
            "legacy",
            "--url",
            url,
            "--set",
            "customer=cus_Override1",
            "--set",
            "data.object.amount_paid=1234",
            "--set",
            'metadata.note={"a": 1}',
            STRIPE_WEBHOOK_SECRET=SECRET,
        )
        assert sent.exit_code == 0, sent.output
        headers, body = receiver.raw[-1]
        stripe.WebhookSignature.verify_header(body.decode(), headers["stripe-signature"], SECRET, tolerance=300)
        event = json.loads(body)
        obj = event["data"]["object"]
        assert (event["type"], obj["customer"], obj["amount_paid"], obj["metadata"]["note"]) == (
            "invoice.payment_succeeded",
            "cus_Override1",
            1234,
            {"a": 1},
        )
        # The legacy checkout names no product of this shop: the demo neuron is filled in, and said so.
        checkout = await aipt(
            "send-test-event",
            "checkout.session.completed",
            "--api",
            "legacy",
            "--url",
            url,
            STRIPE_WEBHOOK_SECRET=SECRET,
        )
        assert "filled data.object.metadata.neuron_id=" in checkout.stdout
        assert receiver.bodies[-1]["data"]["object"]["metadata"] == {"neuron_id": fixtures.DEMO_NEURON}
        # A legacy file name still works; an unknown type lists what there is.
        assert (
            await aipt("send-test-event", "invoice_paid", "--api", "legacy", "--url", url, STRIPE_WEBHOOK_SECRET=SECRET)
        ).exit_code == 0
        assert receiver.bodies[-1]["type"] == "invoice.paid"
        unknown = await aipt("send-test-event", "charge.refunded", "--url", url)
        assert unknown.exit_code == 1 and "known: checkout.session.completed" in unknown.stderr

        payload = tmp_path / "event.json"
        payload.write_text(json.dumps({**fixtures.load("payment_intent.succeeded"), "id": "evt_from_a_file"}))
        from_file = await aipt("send-test-event", "--payload", payload, "--url", url, STRIPE_WEBHOOK_SECRET=SECRET)
        assert from_file.exit_code == 0 and receiver.bodies[-1]["id"] == "evt_from_a_file"
        for args, message in (
            (("--set", "novalue"), "is not path=value"),
            (("--set", "items.data.9.price=x"), "is not an index"),
        ):
            bad = await aipt("send-test-event", "customer.subscription.created", *args, "--url", url)
            assert bad.exit_code == 2 and message in bad.stderr
        (tmp_path / "broken.json").write_text("{")
        broken = await aipt("send-test-event", "--payload", tmp_path / "broken.json", "--url", url)
        assert broken.exit_code == 1 and "cannot read" in broken.stderr
        both = await aipt("send-test-event")
        assert both.exit_code == 2 and "--payload" in both.stderr
        listed = rows(await aipt("send-test-event", "--list", "--json"))
        assert len(listed) == 15 and ("legacy", "invoice.paid") in {(e["api"], e["event_type"]) for e in listed}
        assert len(receiver.bodies) == 4  # nothing was sent by the refused ones
    finally:
        await receiver.close()


COMMANDS = [
    (),
    ("migrate",),
    ("web",),
    ("worker",),
    ("send-test-event",),
    ("dev",),
    ("status",),
    ("cleanup",),
    ("events",),
    ("events", "list"),
    ("events", "show"),
    ("events", "replay"),
    ("dlq",),
    ("dlq", "list"),
    ("dlq", "show"),
    ("dlq", "requeue"),
    ("dlq", "retry"),
    ("dlq", "discard"),
    ("customers",),
    ("customers", "map"),
    ("customers", "list"),
    ("plans",),
    ("plans", "list"),
    ("plans", "add"),
    ("content",),
    ("content", "list"),
    ("content", "guard"),
    ("content", "soft-delete"),
    ("content", "restore"),
    ("content", "hard-delete"),
    ("content", "history"),
    ("ratelimit",),
    ("ratelimit", "dashboard"),
    ("ratelimit", "top-users"),
]


async def test_every_help_names_what_options_take_in_words(aipt):
    for command in COMMANDS:
        shown = await aipt(*command, "--help")
        assert shown.exit_code == 0, (command, shown.output)
        assert not re.search(r"<(bool|str|int|float|list\[\w+\]|Path)>", shown.stdout), (command, shown.stdout)
    assert "--since WHEN" in (await aipt("dlq", "requeue", "--help")).stdout
    assert "--limit" in (await aipt("ratelimit", "top-users", "--help")).stdout


async def test_top_users_prints_a_table_not_python(aipt, conn):
    await conn.execute("select public.f_check_rate_limit(p_endpoint_key => 'api_general', p_tokens_required => 1)")
    text = await aipt("ratelimit", "top-users")
    assert text.exit_code == 0, text.output
    assert "['" not in text.stdout and "[]" not in text.stdout


async def test_the_drill_closes_from_the_cli_with_status_green(aipt, conn, redis):
    """An alert: one event waits for a customer nobody mapped, one will never apply. The operator
    diagnoses, fixes and closes both with `aipt` alone."""
    await seed_catalogue(conn)
    s = aipt.settings.model_copy(update={"retry": aipt.settings.retry.model_copy(update={"attempts": 1})})
    waiting = variant(fixtures.load("subscription_created", "legacy"))
    foreign = variant(fixtures.load("checkout.session.completed"))
    foreign["data"]["object"]["metadata"] = {"neuron_id": "00000000-0000-4000-8000-000000000000"}
    async with live_worker(s):
        for event in (waiting, foreign):
            await store(conn, event)
            await queue.enqueue_event(redis, event["id"])

        async def both_dead():
            return await conn.fetchval("select count(*) = 2 from public.webhook_failures where dead_at is not null")

        from tests.servers import wait_for

        await wait_for(both_dead, timeout=20)
        red = await aipt("status")
        assert red.exit_code == 1 and "2 dead event(s)" in red.stdout and "aipt dlq discard" in red.stdout
        dead = {r["event_id"]: r for r in rows(await aipt("dlq", "list", "--json"))}
        assert "user not known yet for customer cus_IhGfebO16cMIGN" in dead[waiting["id"]]["last_error"]
        assert "aipt customers map" in dead[waiting["id"]]["last_error"]  # the error's hint names the fix
        user = await content.user(conn, "subscriber@shop.test")
        assert (await aipt("customers", "map", LEGACY_CUSTOMER, "subscriber@shop.test")).exit_code == 0
        requeued = await aipt("dlq", "requeue", waiting["id"], "--wait")
        assert requeued.exit_code == 0 and f"{waiting['id']}: ok" in requeued.stdout, requeued.output
        discarded = await aipt("dlq", "discard", foreign["id"], "--reason", "names a neuron this shop never sold")
        assert discarded.exit_code == 0, discarded.output
        green = await aipt("status")
        assert green.exit_code == 0, green.output
    assert await status(conn, waiting["id"]) == "ok"
    assert await conn.fetchval("select user_id from public.user_subscriptions") == user
    assert USER  # the fixtures' user never came into it
