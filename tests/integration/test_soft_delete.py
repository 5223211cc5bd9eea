"""Soft delete, guards, restore, hard delete and the audit trail (schema/23_neuron_delete_guard.sql).

Each test acts as PostgREST would (tests/roles.py): an admin is `authenticated` with an admin JWT,
a user is `authenticated` without one, plus `anon` and `service_role`; the `conn` fixture itself is
a superuser session, which is an admin too (operators in psql, the scheduler).
"""

from __future__ import annotations

import datetime as dt
import uuid
from contextlib import asynccontextmanager

import asyncpg
import pytest

from tests import content
from tests.roles import acting_as
from tests.servers import create_database, drop_database

NEURON_GUARD = "select * from public.f_can_delete_neuron($1)"
BUNDLE_GUARD = "select * from public.f_can_delete_bundle($1)"

# Every function of the API with the kind of id it takes (None: no argument).
API = [
    ("select * from public.f_can_delete_neuron($1)", "neuron"),
    ("select * from public.f_can_delete_bundle($1)", "bundle"),
    ("select public.f_soft_delete_neuron($1)", "neuron"),
    ("select public.f_soft_delete_bundle($1)", "bundle"),
    ("select public.f_restore_neuron($1)", "neuron"),
    ("select public.f_restore_bundle($1)", "bundle"),
    ("select public.f_hard_delete_neuron($1)", "neuron"),
    ("select public.f_hard_delete_bundle($1)", "bundle"),
    ("select * from public.f_cleanup_old_deleted_data()", None),
]


@pytest.fixture(scope="module")
async def module_db(template_db):
    name = f"aipt_m_{uuid.uuid4().hex[:12]}"
    url = await create_database(name, template=template_db)
    yield url
    await drop_database(name)


@pytest.fixture
async def conn(module_db):
    """A superuser connection whose whole test runs in one transaction, rolled back at the end.

    Cloning a database per test costs more than these tests themselves; none of them needs its
    writes seen by another connection (the concurrency tests, which do, have their own module).
    """
    c = await asyncpg.connect(module_db)
    tr = c.transaction()
    await tr.start()
    try:
        yield c
    finally:
        await tr.rollback()
        await c.close()


@pytest.fixture
async def admin(conn):
    return await content.user(conn, "admin@example.test")


@pytest.fixture
async def member(conn):
    return await content.user(conn, "member@example.test")


@asynccontextmanager
async def refused(conn, error, match=None):
    """Expect `error` from the block, run in a savepoint so that the test's transaction goes on."""
    with pytest.raises(error, match=match) as info:
        async with conn.transaction():
            yield info


# --- guards -------------------------------------------------------------------------------------


async def test_guard_allows_a_neuron_nothing_depends_on(conn, admin):
    n = await content.neuron(conn)
    async with acting_as(conn, "authenticated", admin, admin=True):
        row = await conn.fetchrow(NEURON_GUARD, n)
    assert row["can_delete"] is True
    assert row["active_bundles"] == [] and row["active_subscriptions"] == 0
    assert row["reason"].startswith("neuron can be deleted")


async def test_guard_names_the_live_bundles_holding_a_neuron(conn):
    n = await content.neuron(conn)
    await content.bundle(conn, "starter", neurons=[n])
    await content.bundle(conn, "pro", neurons=[n])
    gone = await content.bundle(conn, "retired", neurons=[n])
    assert await conn.fetchval("select public.f_soft_delete_bundle($1)", gone)

    row = await conn.fetchrow(NEURON_GUARD, n)
    assert row["can_delete"] is False
    assert row["active_bundles"] == ["pro", "starter"]
    assert row["reason"] == "neuron is in 2 live bundle(s): pro, starter"


async def test_guard_counts_only_active_unexpired_subscriptions_at_or_above_the_tier(conn):
    n = await content.neuron(conn, tier=2)
    b = await content.bundle(conn, tier=2)
    await content.subscription(conn, tier=2)  # counts
    await content.subscription(conn, tier=3, status="trialing")  # counts
    await content.subscription(conn, tier=5, expires_in=None)  # counts: no end date
    await content.subscription(conn, tier=1)  # tier too low
    await content.subscription(conn, tier=5, status="canceled")
    await content.subscription(conn, tier=5, status="past_due")
    await content.subscription(conn, tier=5, expires_in=dt.timedelta(days=-1))  # expired
    await content.subscription(conn, tier=5, ended=True)  # deleted at Stripe

    neuron_row = await conn.fetchrow(NEURON_GUARD, n)
    bundle_row = await conn.fetchrow(BUNDLE_GUARD, b)
    assert (neuron_row["can_delete"], neuron_row["active_subscriptions"]) == (False, 3)
    assert neuron_row["reason"] == "neuron is reachable through 3 active subscription(s)"
    assert (bundle_row["can_delete"], bundle_row["active_subscriptions"]) == (False, 3)

    higher = await content.neuron(conn, tier=6)
    assert (await conn.fetchrow(NEURON_GUARD, higher))["can_delete"] is True


async def test_guard_protects_what_was_bought_directly_or_in_a_bundle(conn):
    bought = await content.neuron(conn)
    await content.purchase(conn, neuron_id=bought)
    in_bought_bundle = await content.neuron(conn)
    b = await content.bundle(conn, neurons=[in_bought_bundle])
    await content.purchase(conn, bundle_id=b)

    row = await conn.fetchrow(NEURON_GUARD, bought)
    assert (row["can_delete"], row["reason"]) == (False, "neuron was bought 1 time(s) (on its own or in a bundle)")
    bundle_row = await conn.fetchrow(BUNDLE_GUARD, b)
    assert (bundle_row["can_delete"], bundle_row["reason"]) == (False, "bundle was bought 1 time(s)")
    # Held by a live bundle and bought through it: both reasons, in one sentence.
    row = await conn.fetchrow(NEURON_GUARD, in_bought_bundle)
    assert row["can_delete"] is False
    assert row["reason"].endswith("; was bought 1 time(s) (on its own or in a bundle)")


async def test_guard_answers_unknown_and_deleted_ids_with_a_reason(conn):
    unknown = uuid.uuid4()
    assert tuple(await conn.fetchrow(NEURON_GUARD, unknown)) == (False, "neuron not found", [], 0)
    assert tuple(await conn.fetchrow(BUNDLE_GUARD, unknown)) == (False, "bundle not found", 0)

    n = await content.neuron(conn)
    b = await content.bundle(conn)
    await conn.execute("select public.f_soft_delete_neuron($1)", n)
    await conn.execute("select public.f_soft_delete_bundle($1)", b)
    for guard, content_id, kind in ((NEURON_GUARD, n, "neuron"), (BUNDLE_GUARD, b, "bundle")):
        row = await conn.fetchrow(guard, content_id)
        assert row["can_delete"] is False
        assert row["reason"].startswith(f"{kind} is already deleted (since ")


async def test_soft_delete_refused_by_the_guard_changes_nothing(conn, admin):
    n = await content.neuron(conn)
    await content.bundle(conn, "keeper", neurons=[n])
    async with acting_as(conn, "authenticated", admin, admin=True):
        async with refused(conn, asyncpg.ObjectInUseError, match="cannot delete neuron .*: it is in 1 live bundle"):
            await conn.fetchval("select public.f_soft_delete_neuron($1)", n)
    assert await content.deleted_at(conn, "neuron", n) is None
    assert await content.history(conn, n) == []


# --- who may do what ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["anon", "authenticated"])
async def test_non_admins_can_call_no_function_of_the_api(conn, member, role):
    n = await content.neuron(conn)
    b = await content.bundle(conn)
    deleted = await content.neuron(conn)
    await conn.execute("select public.f_soft_delete_neuron($1)", deleted)
    ids = {"neuron": n, "bundle": b}
    async with acting_as(conn, role, member if role == "authenticated" else None):
        for sql, kind in API:
            args = [] if kind is None else [deleted if "restore_neuron" in sql else ids[kind]]
            async with refused(conn, asyncpg.InsufficientPrivilegeError) as denied:
                await conn.execute(sql, *args)
            # anon has no EXECUTE at all; a signed-in user is stopped by the admin check.
            expected = "permission denied for function" if role == "anon" else "only admins may"
            assert expected in str(denied.value), sql
    assert await content.deleted_at(conn, "neuron", n) is None
    assert await content.deleted_at(conn, "neuron", deleted) is not None
    assert len(await content.history(conn, deleted)) == 1


async def test_internal_helpers_are_not_callable_through_the_api(conn, admin):
    helpers = [
        r["fn"]
        for r in await conn.fetch(
            """select p.oid::regprocedure::text as fn from pg_proc p
               where p.pronamespace = 'public'::regnamespace and p.proname ~ '^(_|tg_)'"""
        )
    ]
    assert "_soft_delete_content(text,uuid,text)" in helpers
    callable_by = await conn.fetch(
        """select p.oid::regprocedure::text as fn, r.role
           from pg_proc p, unnest(array['public', 'anon', 'authenticated', 'service_role']) r(role)
           where p.pronamespace = 'public'::regnamespace and p.proname ~ '^(_|tg_)'
             and has_function_privilege(r.role, p.oid, 'execute')"""
    )
    assert callable_by == []
    async with acting_as(conn, "service_role"):
        async with refused(conn, asyncpg.InsufficientPrivilegeError, match="permission denied for function"):
            await conn.execute("select public._soft_delete_content('neuron', gen_random_uuid(), null)")


async def test_an_admin_jwt_soft_deletes_and_is_recorded_as_the_deleter(conn, admin):
    n = await content.neuron(conn)
    async with acting_as(conn, "authenticated", admin, admin=True):
        assert await conn.fetchval("select public.f_soft_delete_neuron($1, 'duplicate of another')", n) is True
        row = await conn.fetchrow("select deleted_at, deleted_by, deletion_reason from public.neurons where id = $1", n)
        assert row["deleted_at"] is not None
        assert (row["deleted_by"], row["deletion_reason"]) == (admin, "duplicate of another")
        (entry,) = await content.history(conn, n)
        assert (entry["action"], entry["actor_id"], entry["actor_role"]) == ("soft_delete", admin, "authenticated")
        assert entry["reason"] == "duplicate of another"


async def test_service_role_and_superuser_are_admins_without_a_user(conn):
    n = await content.neuron(conn)
    b = await content.bundle(conn)
    async with acting_as(conn, "service_role"):
        assert await conn.fetchval("select public.f_soft_delete_neuron($1)", n) is True
        assert await conn.fetchval("select deleted_by from public.neurons where id = $1", n) is None
        assert [r["actor_role"] for r in await content.history(conn, n)] == ["service_role"]
    assert await conn.fetchval("select public.f_soft_delete_bundle($1, 'operator')", b) is True
    (entry,) = await content.history(conn, b)
    assert (entry["actor_id"], entry["actor_role"]) == (None, "postgres")


async def test_a_jwt_for_a_user_that_no_longer_exists_leaves_deleted_by_empty(conn):
    n = await content.neuron(conn)
    ghost = uuid.uuid4()
    async with acting_as(conn, "authenticated", ghost, admin=True):
        assert await conn.fetchval("select public.f_soft_delete_neuron($1)", n) is True
        assert await conn.fetchval("select deleted_by from public.neurons where id = $1", n) is None
        assert (await content.history(conn, n))[0]["actor_id"] == ghost


async def test_deleting_the_user_keeps_the_deleted_content(conn, admin):
    n = await content.neuron(conn)
    await conn.execute(
        "select set_config('request.jwt.claims', $1, false)", f'{{"sub": "{admin}", "role": "authenticated"}}'
    )
    assert await conn.fetchval("select public.f_soft_delete_neuron($1)", n)
    await conn.execute("delete from auth.users where id = $1", admin)
    row = await conn.fetchrow("select deleted_at, deleted_by from public.neurons where id = $1", n)
    assert row["deleted_at"] is not None and row["deleted_by"] is None
    assert (await content.history(conn, n))[0]["actor_id"] == admin


# --- nobody but an admin sees deleted rows ------------------------------------------------------


@pytest.fixture
async def some_deleted(conn):
    """A live neuron and bundle linked together, and a deleted neuron and bundle with their links."""
    live_n, gone_n = await content.neuron(conn, "live-n"), await content.neuron(conn, "gone-n")
    live_b = await content.bundle(conn, "live-b", neurons=[live_n])
    gone_b = await content.bundle(conn, "gone-b", neurons=[live_n, gone_n])
    assert await conn.fetchval("select public.f_soft_delete_bundle($1)", gone_b)
    assert await conn.fetchval("select public.f_soft_delete_neuron($1)", gone_n)
    return {"live_n": live_n, "gone_n": gone_n, "live_b": live_b, "gone_b": gone_b}


VISIBLE = {
    "neurons": "select slug from public.neurons order by slug",
    "bundles": "select slug from public.bundles order by slug",
    "bundle_neurons": "select count(*)::text from public.bundle_neurons",
    "v_neurons_deleted": "select slug from public.v_neurons_deleted",
    "v_bundles_deleted": "select slug from public.v_bundles_deleted",
    "content_deletion_log": "select slug from public.content_deletion_log order by id",
}


async def visible(conn) -> dict[str, list[str] | str]:
    seen = {}
    for name, sql in VISIBLE.items():
        try:
            async with conn.transaction():
                seen[name] = [r[0] for r in await conn.fetch(sql)]
        except asyncpg.InsufficientPrivilegeError:
            seen[name] = "denied"
    return seen


async def test_anonymous_and_users_see_live_rows_only(conn, member, some_deleted):
    live = {
        "neurons": [],  # the rows carry content_full: users see neurons in v_neuron_public
        "bundles": ["live-b"],
        "bundle_neurons": ["1"],
        "v_neurons_deleted": [],
        "v_bundles_deleted": [],
        "content_deletion_log": [],
    }
    async with acting_as(conn, "authenticated", member):
        assert await visible(conn) == live
        assert [r["slug"] for r in await conn.fetch("select slug from public.v_neuron_public")] == ["live-n"]
    # Anonymous callers read the public catalogue views, never the tables.
    async with acting_as(conn, "anon"):
        assert await visible(conn) == dict.fromkeys(VISIBLE, "denied")
        assert [r["slug"] for r in await conn.fetch("select slug from public.v_neuron_public")] == ["live-n"]
        assert [
            (r["slug"], r["items"]) for r in await conn.fetch("select slug, items from public.v_bundle_public")
        ] == [("live-b", 1)]


async def test_admins_see_everything(conn, admin, some_deleted):
    everything = {
        "neurons": ["gone-n", "live-n"],
        "bundles": ["gone-b", "live-b"],
        "bundle_neurons": ["3"],
        "v_neurons_deleted": ["gone-n"],
        "v_bundles_deleted": ["gone-b"],
        "content_deletion_log": ["gone-b", "gone-n"],
    }
    async with acting_as(conn, "authenticated", admin, admin=True):
        assert await visible(conn) == everything
    async with acting_as(conn, "service_role"):
        assert await visible(conn) == everything


async def test_the_deleted_views_carry_who_when_why_for_admins_only(conn, admin, member):
    admin_email = await conn.fetchval("select email from auth.users where id = $1", admin)
    n = await content.neuron(conn, "gone-n")
    b = await content.bundle(conn, "gone-b", neurons=[n, await content.neuron(conn)])
    async with acting_as(conn, "authenticated", admin, admin=True):
        assert await conn.fetchval("select public.f_soft_delete_bundle($1, 'discontinued')", b)
        row = await conn.fetchrow("select * from public.v_bundles_deleted")
        assert list(row.keys()) == [
            # the deployed shop's columns first, in its order, then this project's
            "id", "slug", "title", "description", "deleted_at", "deleted_by_email", "deletion_reason",
            "active_neuron_refs", "required_tier", "deleted_by", "hard_delete_from", "neuron_links",
        ]  # fmt: skip
        assert (row["deleted_by"], row["deleted_by_email"], row["deletion_reason"]) == (
            admin,
            admin_email,
            "discontinued",
        )
        assert row["hard_delete_from"] - row["deleted_at"] == dt.timedelta(days=90)
        assert (row["neuron_links"], row["active_neuron_refs"]) == (2, 0)
        assert await conn.fetchval("select public.f_soft_delete_neuron($1)", n)
        neuron_row = await conn.fetchrow("select * from public.v_neurons_deleted")
        assert list(neuron_row.keys()) == [
            "id", "slug", "title", "summary", "deleted_at", "deleted_by_email", "deletion_reason",
            "active_bundle_refs", "required_tier", "deleted_by", "hard_delete_from",
        ]  # fmt: skip
        assert (neuron_row["slug"], neuron_row["deleted_by_email"]) == ("gone-n", admin_email)
    # Nobody else learns who deleted what, nor anyone's e-mail.
    async with acting_as(conn, "authenticated", member):
        assert await conn.fetch("select * from public.v_bundles_deleted") == []
        assert await conn.fetchval("select public.admin_user_email($1)", admin) is None


async def test_table_writes_cannot_soft_delete_restore_or_hard_delete(conn, admin, some_deleted):
    """Even admins go through the functions: no guard, 90 days or audit trail is skipped."""
    writes = [
        ("update public.neurons set deleted_at = now() where id = $1", some_deleted["live_n"]),
        ("update public.neurons set deletion_reason = 'x' where id = $1", some_deleted["gone_n"]),
        ("update public.bundles set deleted_at = null where id = $1", some_deleted["gone_b"]),
        ("delete from public.neurons where id = $1", some_deleted["gone_n"]),
        ("delete from public.bundles where id = $1", some_deleted["gone_b"]),
        ("insert into public.neurons (slug, title, deleted_at) values ($1::text, 'x', now())", "sneaky"),
        ("update public.bundle_neurons set deleted_at = null where bundle_id = $1", some_deleted["gone_b"]),
    ]
    for role, claims in (("authenticated", dict(user_id=admin, admin=True)), ("service_role", {})):
        async with acting_as(conn, role, **claims):
            for sql, arg in writes:
                # A signed-in admin has no DELETE on content at all; service_role has, and the trigger stops it.
                stop = (
                    "permission denied for table"
                    if role == "authenticated" and sql.startswith("delete")
                    else "through public.f_|f_hard_delete|follows"
                )
                async with refused(conn, asyncpg.InsufficientPrivilegeError, match=stop):
                    await conn.execute(sql, arg)
            # Editing content stays possible, deleted or not.
            await conn.execute("update public.neurons set title = 'Renamed' where id = $1", some_deleted["gone_n"])


async def test_a_link_added_to_deleted_content_starts_down(conn, admin, some_deleted):
    fresh = await content.neuron(conn)
    async with acting_as(conn, "authenticated", admin, admin=True):
        await content.link(conn, some_deleted["gone_b"], fresh)
        await content.link(conn, some_deleted["live_b"], fresh)
        down = await conn.fetchval(
            "select deleted_at is not null from public.bundle_neurons where bundle_id = $1 and neuron_id = $2",
            some_deleted["gone_b"],
            fresh,
        )
        assert down is True
        assert await content.inconsistent_links(conn) == []


# --- cascade and exact restore ------------------------------------------------------------------


async def test_bundle_delete_takes_its_links_down_and_restore_brings_them_back(conn, admin):
    n1, n2 = await content.neuron(conn), await content.neuron(conn)
    b = await content.bundle(conn, neurons=[n1, n2])
    async with acting_as(conn, "authenticated", admin, admin=True):
        assert await conn.fetchval("select public.f_soft_delete_bundle($1, 'seasonal')", b) is True
        assert await content.live_links(conn, bundle_id=b) == set()
        assert await conn.fetchval("select public.f_restore_bundle($1)", b) is True
        assert await content.live_links(conn, bundle_id=b) == {(b, n1), (b, n2)}
        row = await conn.fetchrow("select deleted_at, deleted_by, deletion_reason from public.bundles where id = $1", b)
        assert tuple(row) == (None, None, None)
        entries = await content.history(conn, b)
    assert [e["action"] for e in entries] == ["soft_delete", "restore"]
    cascaded = [sorted(link["neuron_id"] for link in e["cascaded"]) for e in entries]
    assert cascaded == [sorted([str(n1), str(n2)])] * 2


async def test_restore_brings_back_only_what_that_delete_took_down(conn):
    kept, dropped = await content.neuron(conn, "kept"), await content.neuron(conn, "dropped")
    x = await content.bundle(conn, "x", neurons=[kept, dropped])
    assert await conn.fetchval("select public.f_soft_delete_bundle($1)", x)
    # With x gone, `dropped` is in no live bundle: deleted separately, afterwards.
    assert await conn.fetchval("select public.f_soft_delete_neuron($1)", dropped)

    assert await conn.fetchval("select public.f_restore_bundle($1)", x)
    assert await content.live_links(conn, bundle_id=x) == {(x, kept)}
    (restore,) = [e for e in await content.history(conn, x) if e["action"] == "restore"]
    assert [link["neuron_id"] for link in restore["cascaded"]] == [str(kept)]
    assert await content.inconsistent_links(conn) == []

    assert await conn.fetchval("select public.f_restore_neuron($1)", dropped)
    assert await content.live_links(conn, bundle_id=x) == {(x, kept), (x, dropped)}


async def test_neuron_restore_leaves_links_to_a_still_deleted_bundle_down(conn):
    n = await content.neuron(conn)
    y = await content.bundle(conn, neurons=[n])
    z = await content.bundle(conn, neurons=[n])
    assert await conn.fetchval("select public.f_soft_delete_bundle($1)", y)
    assert await conn.fetchval("select public.f_soft_delete_bundle($1)", z)
    assert await conn.fetchval("select public.f_soft_delete_neuron($1)", n)
    assert await conn.fetchval("select public.f_restore_bundle($1)", z)  # z is back, without n
    assert await content.live_links(conn, neuron_id=n) == set()

    assert await conn.fetchval("select public.f_restore_neuron($1)", n)
    assert await content.live_links(conn, neuron_id=n) == {(z, n)}
    assert await content.inconsistent_links(conn) == []


async def test_repeat_calls_return_false_and_unknown_ids_raise(conn, admin):
    n = await content.neuron(conn)
    async with acting_as(conn, "authenticated", admin, admin=True):
        assert await conn.fetchval("select public.f_restore_neuron($1)", n) is False
        assert await conn.fetchval("select public.f_soft_delete_neuron($1)", n) is True
        assert await conn.fetchval("select public.f_soft_delete_neuron($1)", n) is False
        assert [e["action"] for e in await content.history(conn, n)] == ["soft_delete"]
        for fn in ("soft_delete_neuron", "soft_delete_bundle", "restore_neuron", "restore_bundle",
                   "hard_delete_neuron", "hard_delete_bundle"):  # fmt: skip
            async with refused(conn, asyncpg.NoDataFoundError, match="not found"):
                await conn.fetchval(f"select public.f_{fn}($1)", uuid.uuid4())


async def test_a_deleted_slug_can_be_reused_and_then_blocks_its_restore(conn):
    old = await content.neuron(conn, "prompt-pack")
    async with refused(conn, asyncpg.UniqueViolationError):
        await content.neuron(conn, "prompt-pack")
    assert await conn.fetchval("select public.f_soft_delete_neuron($1)", old)
    new = await content.neuron(conn, "prompt-pack")
    async with refused(conn, asyncpg.UniqueViolationError, match="its slug prompt-pack is taken by a live neuron"):
        await conn.fetchval("select public.f_restore_neuron($1)", old)
    assert await content.deleted_at(conn, "neuron", old) is not None
    assert await conn.fetchval("select public.f_soft_delete_neuron($1)", new)
    assert await conn.fetchval("select public.f_restore_neuron($1)", old)


# --- hard delete and the 90-day rule ------------------------------------------------------------


async def test_hard_delete_only_after_soft_delete_and_90_days(conn, admin):
    n = await content.neuron(conn)
    b = await content.bundle(conn, neurons=[n])
    async with acting_as(conn, "authenticated", admin, admin=True):
        async with refused(conn, asyncpg.ObjectNotInPrerequisiteStateError, match="it is not soft-deleted"):
            await conn.fetchval("select public.f_hard_delete_bundle($1)", b)
    assert await conn.fetchval("select public.f_soft_delete_bundle($1)", b)
    await content.backdate(conn, "bundle", b, days=89)
    async with acting_as(conn, "authenticated", admin, admin=True):
        async with refused(conn, asyncpg.ObjectNotInPrerequisiteStateError, match="hard delete is possible from"):
            await conn.fetchval("select public.f_hard_delete_bundle($1)", b)

    await content.backdate(conn, "bundle", b, days=90)
    async with acting_as(conn, "authenticated", admin, admin=True):
        assert await conn.fetchval("select public.f_hard_delete_bundle($1)", b) is True
        assert await conn.fetchval("select public.f_hard_delete_bundle($1)", b) is False  # gone already
        assert await conn.fetchval("select count(*) from public.bundles where id = $1", b) == 0
        assert await conn.fetchval("select count(*) from public.bundle_neurons where bundle_id = $1", b) == 0
        entries = await content.history(conn, b)
        assert [e["action"] for e in entries] == ["soft_delete", "hard_delete"]
        assert entries[1]["cascaded"] == [{"bundle_id": str(b), "neuron_id": str(n)}]
        assert (entries[1]["slug"], entries[1]["actor_id"]) == (entries[0]["slug"], admin)


async def test_hard_delete_checks_the_guard_again(conn):
    # Bought after its soft delete (a late webhook): kept.
    b = await content.bundle(conn)
    assert await conn.fetchval("select public.f_soft_delete_bundle($1)", b)
    await content.purchase(conn, bundle_id=b)
    await content.backdate(conn, "bundle", b, days=120)
    async with refused(conn, asyncpg.ObjectInUseError, match="cannot hard-delete bundle .*: it was bought 1 time"):
        await conn.fetchval("select public.f_hard_delete_bundle($1)", b)

    # Its bundle came back after it was deleted: restoring it would put it back there, so it stays.
    n = await content.neuron(conn)
    holder = await content.bundle(conn, "holder", neurons=[n])
    assert await conn.fetchval("select public.f_soft_delete_bundle($1)", holder)
    assert await conn.fetchval("select public.f_soft_delete_neuron($1)", n)
    assert await conn.fetchval("select public.f_restore_bundle($1)", holder)
    await content.backdate(conn, "neuron", n, days=120)
    async with refused(conn, asyncpg.ObjectInUseError, match="it is in 1 live bundle\\(s\\): holder"):
        await conn.fetchval("select public.f_hard_delete_neuron($1)", n)
    assert await conn.fetchval("select count(*) from public.neurons where id = $1", n) == 1


@pytest.mark.parametrize("scheduler", ["superuser", "service_role"])
async def test_cleanup_runs_from_a_scheduler_without_a_jwt(conn, scheduler):
    old_n, guarded_n, recent_n = await content.neuron(conn), await content.neuron(conn), await content.neuron(conn)
    old_b = await content.bundle(conn, neurons=[old_n, guarded_n])
    for kind, content_id in (("bundle", old_b), ("neuron", old_n), ("neuron", guarded_n), ("neuron", recent_n)):
        assert await conn.fetchval(f"select public.f_soft_delete_{kind}($1)", content_id)
    await content.purchase(conn, neuron_id=guarded_n)  # a late purchase: the guard keeps it
    for kind, content_id in (("bundle", old_b), ("neuron", old_n), ("neuron", guarded_n)):
        await content.backdate(conn, kind, content_id, days=91)

    notices = []
    conn.add_log_listener(lambda _conn, message: notices.append(message.message))
    if scheduler == "superuser":
        rows = await conn.fetch("select * from public.f_cleanup_old_deleted_data()")
    else:
        await conn.execute("set role service_role")  # no request.jwt.claims at all
        rows = await conn.fetch("select * from public.f_cleanup_old_deleted_data()")
        await conn.execute("reset role")

    counts = {r["table_name"]: r["deleted_count"] for r in rows}
    assert counts == {"bundles": 1, "neurons": 1, "bundle_neurons": 2}
    cutoffs = {r["cleanup_date"] for r in rows}
    assert len(cutoffs) == 1
    assert abs((dt.datetime.now(dt.UTC) - cutoffs.pop()) - dt.timedelta(days=90)) < dt.timedelta(minutes=1)
    remaining = {r["id"] for r in await conn.fetch("select id from public.neurons")}
    assert remaining == {guarded_n, recent_n}
    assert any(str(guarded_n) in n and "was bought" in n for n in notices)
    (entry,) = [e for e in await content.history(conn, old_n) if e["action"] == "hard_delete"]
    assert entry["actor_role"] == ("postgres" if scheduler == "superuser" else "service_role")
    assert entry["reason"].startswith("cleanup")


# --- the audit trail ----------------------------------------------------------------------------


async def test_the_trail_is_append_only_even_for_the_owner(conn):
    n = await content.neuron(conn)
    assert await conn.fetchval("select public.f_soft_delete_neuron($1, 'typo')", n)
    for sql in (
        "update public.content_deletion_log set reason = 'rewritten'",
        "delete from public.content_deletion_log",
        "truncate public.content_deletion_log",
    ):
        async with refused(conn, asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(sql)
    assert [e["reason"] for e in await content.history(conn, n)] == ["typo"]


async def test_api_roles_cannot_write_the_trail(conn, admin):
    for role, claims in (("authenticated", dict(user_id=admin, admin=True)), ("service_role", {})):
        async with acting_as(conn, role, **claims):
            async with refused(conn, asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(
                    """insert into public.content_deletion_log (action, content_kind, content_id, slug, title, actor_role)
                       values ('restore', 'neuron', gen_random_uuid(), 's', 't', 'me')"""
                )
