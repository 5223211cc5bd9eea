"""`aipt content ...` against a real database: the commands call the SQL functions and report plainly."""

from __future__ import annotations

import json
import uuid

from tests import content


def said(stream: str) -> str:
    """What a stream says, whatever the console wrapped (errors wrap at 80 columns off a terminal)."""
    return " ".join(stream.split())


async def test_guard_prints_the_guard_and_finds_the_kind_itself(aipt, conn):
    n = await content.neuron(conn)
    await content.bundle(conn, "holder", neurons=[n])

    result = await aipt("content", "guard", n, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "kind": "neuron",
        "id": str(n),
        "can_delete": False,
        "reason": "neuron is in 1 live bundle(s): holder",
        "active_bundles": ["holder"],
        "active_subscriptions": 0,
    }
    table = await aipt("content", "guard", "neuron", n)
    assert table.exit_code == 0 and "holder" in table.stdout and "['holder']" not in table.stdout


async def test_soft_delete_restore_and_history(aipt, conn):
    b = await content.bundle(conn, "seasonal", neurons=[await content.neuron(conn)])

    deleted = await aipt("content", "soft-delete", "bundle", b, "--reason", "out of season")
    assert (deleted.exit_code, deleted.stdout.strip()) == (0, f"soft-deleted bundle {b}")
    again = await aipt("content", "soft-delete", b)
    assert (again.exit_code, again.stdout.strip()) == (0, f"bundle {b} was already deleted: nothing changed")
    restored = await aipt("content", "restore", b)
    assert (restored.exit_code, restored.stdout.strip()) == (0, f"restored bundle {b}")

    history = await aipt("content", "history", b, "--json")
    assert history.exit_code == 0, history.output
    entries = json.loads(history.stdout)
    assert [(e["action"], e["reason"], e["actor_role"], e["links"]) for e in entries] == [
        ("soft_delete", "out of season", "postgres", 1),
        ("restore", None, "postgres", 1),
    ]
    assert entries[0]["cascaded"][0]["bundle_id"] == str(b)
    # The state changes came from the functions: the trail and the row agree.
    assert await conn.fetchval("select deleted_at from public.bundles where id = $1", b) is None
    table = await aipt("content", "history", b)
    assert table.exit_code == 0 and f"history of {b}" in table.stdout


async def test_refusals_print_the_reason_and_exit_1(aipt, conn):
    n = await content.neuron(conn)
    await content.purchase(conn, neuron_id=n)

    refused = await aipt("content", "soft-delete", "neuron", n)
    assert refused.exit_code == 1
    assert "cannot delete neuron" in said(refused.stderr) and "was bought 1 time(s)" in said(refused.stderr)
    assert await conn.fetchval("select deleted_at from public.neurons where id = $1", n) is None

    free = await content.neuron(conn)
    assert await conn.fetchval("select public.f_soft_delete_neuron($1)", free)
    early = await aipt("content", "hard-delete", free)
    assert early.exit_code == 1 and "hard delete is possible from" in said(early.stderr)

    await content.backdate(conn, "neuron", free, days=91)
    gone = await aipt("content", "hard-delete", free)
    assert (gone.exit_code, gone.stdout.strip()) == (0, f"hard-deleted neuron {free}")
    # A hard-deleted id is still known to the trail: its kind is found, and the repeat changes nothing.
    repeat = await aipt("content", "hard-delete", free)
    assert (repeat.exit_code, repeat.stdout.strip()) == (0, f"neuron {free} was hard-deleted already: nothing changed")


async def test_bad_targets_are_refused_before_the_database_is_asked(aipt):
    for args, message in (
        (("guard", str(uuid.uuid4())), "no neuron or bundle has id"),
        (("guard", "nope"), "not a valid id: 'nope'"),
        (("guard", "page", str(uuid.uuid4())), "kind must be neuron or bundle"),
        (("restore", "neuron", str(uuid.uuid4())), "not found"),
    ):
        result = await aipt("content", *args)
        assert result.exit_code == 1, args
        assert message in said(result.stderr), (args, result.stderr)
