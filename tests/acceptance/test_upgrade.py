"""Upgrade in place: the shop's deployed Supabase database (shared/legacy, both versions of its 23, with its
data) on a Supabase-shaped cluster (shared/supabase, postgres not a superuser), migrated by `aipt migrate`.

Every row is kept with its values, the deployed API keeps its signatures, the deployed admins stay admins,
access only narrows (every hole of the deployed database closed), a failing run changes not one byte,
and the result works: webhooks apply end to end, admins soft delete and requeue.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from aipt import fixtures, migrate, queue
from tests import catalog
from tests.ops import live_worker
from tests.roles import acting_as
from tests.servers import create_database, drop_database, make_settings, post_event, run_aipt, run_worker, wait_for
from tests.supabase import build_legacy

ADMIN = uuid.UUID("a0000000-0000-0000-0000-000000000001")  # an admin only through public.user_roles
ALICE = uuid.UUID("a0000000-0000-0000-0000-000000000002")  # member; architect, active
BOB = uuid.UUID("a0000000-0000-0000-0000-000000000003")  # no role; elite, canceled
CAROL = uuid.UUID("ec647f7f-dd13-4089-a2f0-25eec0473a52")  # the user of the current-api fixtures
DAVE = uuid.UUID("a0000000-0000-0000-0000-000000000005")  # architect, "active" but expired 3 days ago
ERIN = uuid.UUID("a0000000-0000-0000-0000-000000000006")  # member; initiate, past_due

DEEP_WORK = uuid.UUID("b0000000-0000-0000-0000-000000000002")  # architect
DRAFT_X = uuid.UUID("b0000000-0000-0000-0000-000000000004")  # elite, unpublished
SYSTEMS_MAP = uuid.UUID("17ea841a-9ee1-4f9e-87e6-a1f2dbc1edd3")  # initiate; the neuron of the current-api fixtures
FOCUS_LOOP = uuid.UUID("b0000000-0000-0000-0000-000000000001")  # free
STARTER = uuid.UUID("c0000000-0000-0000-0000-000000000001")

# Every table of the deployed database with data; each keeps every row and every value of its columns.
TABLES = ["auth.users", "public.user_roles", "public.plans", "public.neurons", "public.bundles", "public.bundle_neurons",
          "public.library_tree", "public.library_tree_neurons", "public.user_subscriptions", "public.stripe_events",
          "public.rate_limit_config", "public.rate_limit_buckets", "public.rate_limit_log"]  # fmt: skip

# The deployed views: their columns stay, in order, with their types (more may follow).
VIEWS = ["v_neurons_deleted", "v_bundles_deleted", "v_rate_limit_dashboard", "v_rate_limit_top_users",
         "v_neuron_public", "v_bundle_public", "v_plans_public", "v_tree_public"]  # fmt: skip


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def templates(supabase):
    """Templates on the Supabase-shaped cluster, built lazily: ("deployed", v) is the shop's database with
    version v of its 23, ("upgraded", v) the same after `aipt migrate`."""
    built: dict[tuple[str, str], str] = {}

    async def template(kind: str, version: str) -> str:
        if (kind, version) not in built:
            name = f"aipt_{kind}_{version}_{uuid.uuid4().hex[:6]}"
            if kind == "deployed":
                await _sql(supabase.database_url("postgres"), f'create database "{name}"')
                await asyncio.to_thread(build_legacy, supabase.database_url(name), version)
            else:
                source = await template("deployed", version)
                await _sql(supabase.database_url("postgres"), f'create database "{name}" template "{source}"')
                conn = await asyncpg.connect(supabase.database_url(name))
                try:
                    await migrate.migrate(conn)
                finally:
                    await conn.close()
            built[kind, version] = name
        return built[kind, version]

    yield template
    for name in built.values():
        await _sql(supabase.database_url("postgres"), f'drop database if exists "{name}" with (force)')


async def _copy(supabase, template: str):
    name = f"aipt_up_{uuid.uuid4().hex[:12]}"
    await _sql(supabase.database_url("postgres"), f'create database "{name}" template "{template}"')
    url = supabase.database_url(name)
    conn = await asyncpg.connect(url)
    try:
        yield url, conn
    finally:
        await conn.close()
        await _sql(supabase.database_url("postgres"), f'drop database if exists "{name}" with (force)')


@pytest.fixture(params=["f066a21", "40b810c"])
async def deployed(request, supabase, templates):
    """(url, connection as postgres) of a fresh copy of the shop's deployed database."""
    async for copy in _copy(supabase, await templates("deployed", request.param)):
        yield copy


@pytest.fixture(params=["f066a21", "40b810c"])
async def upgraded(request, supabase, templates):
    """(url, connection as postgres) of a fresh copy of the shop's database after `aipt migrate`."""
    async for copy in _copy(supabase, await templates("upgraded", request.param)):
        yield copy


async def _sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def fresh_supabase(supabase):
    """A fresh install on the Supabase-shaped cluster."""
    name = f"aipt_fresh_{uuid.uuid4().hex[:12]}"
    await _sql(supabase.database_url("postgres"), f'create database "{name}"')
    conn = await asyncpg.connect(supabase.database_url(name))
    await migrate.migrate(conn)
    yield conn
    await conn.close()
    await _sql(supabase.database_url("postgres"), f'drop database if exists "{name}" with (force)')


async def columns(conn, table: str) -> list[str]:
    return [r[0] for r in await conn.fetch(
        "select attname from pg_attribute where attrelid = $1::regclass and attnum > 0 and not attisdropped order by attnum",
        table)]  # fmt: skip


async def checksum(conn, table: str, cols: list[str]) -> tuple[int, str]:
    listed = ", ".join(f'"{c}"' for c in cols)
    return tuple(await conn.fetchrow(
        f"select count(*), md5(coalesce(string_agg(r::text, E'\\n' order by r::text), '')) from (select {listed} from {table}) r"))  # fmt: skip


async def functions(conn) -> dict[str, tuple[str, str]]:
    rows = await conn.fetch("""select p.oid::regprocedure::text, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid)
                               from pg_proc p where p.pronamespace = 'public'::regnamespace""")
    return {r[0]: (r[1], r[2]) for r in rows}


async def view_columns(conn, view: str) -> list[tuple[str, str]]:
    return [tuple(r) for r in await conn.fetch(
        """select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a
           where a.attrelid = to_regclass('public.' || $1) and a.attnum > 0 order by a.attnum""", view)]  # fmt: skip


PRIVILEGES = """
select 'table ' || c.relname, p, has_table_privilege($1::text, c.oid, p)
  from pg_class c, unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p
 where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'v', 'm', 'p', 'f')
union all
select 'column ' || c.relname || '.' || a.attname, p, has_column_privilege($1::text, c.oid, a.attnum, p)
  from pg_class c join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped,
       unnest(array['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) p
 where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'v', 'm', 'p', 'f')
union all
select 'sequence ' || c.relname, p, has_sequence_privilege($1::text, c.oid, p)
  from pg_class c, unnest(array['USAGE', 'SELECT', 'UPDATE']) p
 where c.relnamespace = 'public'::regnamespace and c.relkind = 'S'
union all
select 'function ' || f.oid::regprocedure::text, 'EXECUTE', has_function_privilege($1::text, f.oid, 'EXECUTE')
  from pg_proc f where f.pronamespace = 'public'::regnamespace
"""


async def privileges(conn, role: str) -> dict[tuple[str, str], bool]:
    """Every privilege of role on every object in public, object by object."""
    return {(r[0], r[1]): r[2] for r in await conn.fetch(PRIVILEGES, role)}


async def refused(db, sql: str, *args) -> None:
    """sql fails with insufficient_privilege (in a savepoint, so the block's transaction goes on)."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with db.transaction():
            await db.execute(sql, *args)


async def pg_dump(url: str) -> str:
    proc = await asyncio.create_subprocess_exec("pg_dump", "--no-sync", url, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    # pg_dump 15.14+ frames the dump with a random \restrict key: not part of the database.
    return "\n".join(ln for ln in out.decode().splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


# --- the data and the deployed API stay ----------------------------------------------------------


async def test_every_row_is_kept_with_its_values(deployed):
    _, db = deployed
    before = {}
    for table in TABLES:
        cols = await columns(db, table)
        before[table] = cols, await checksum(db, table, cols)
    failures_before = await db.fetch("select id, event_id, context, error, created_at from public.webhook_failures")

    assert await migrate.migrate(db) == [m.name for m in migrate.discover()]

    for table, (cols, sums) in before.items():
        assert set(cols) <= set(await columns(db, table)), table
        assert await checksum(db, table, cols) == sums, table
    # The deployed failures, one row per attempt, are each event's history now; none is lost.
    assert len(failures_before) == 8
    histories = {r["event_id"]: json.loads(r["history"])
                 for r in await db.fetch("select event_id, history from public.webhook_failures")}  # fmt: skip
    kept = {(h["deployed_id"], h["error"], h["context"]) for hs in histories.values() for h in hs if "deployed_id" in h}
    assert kept == {(str(f["id"]), f["error"], f["context"]) for f in failures_before}
    assert len(histories["evt_1LegacyCheckoutPay0001"]) == 3
    # The orphan (its event row was deleted) survives, dead, with a note saying so.
    orphan = await db.fetchrow("select * from public.webhook_failures where event_id = 'evt_1LegacyCheckoutBad0001'")
    assert orphan["dead_at"] is not None and "deleted" in json.loads(orphan["history"])[-1]["note"]
    # The deployed dead-letter queue is this project's: dead, or due again where an admin asked (pending).
    states = {r["event_id"]: (r["status"], r["dead"]) for r in await db.fetch(
        """select f.event_id, e.status, f.dead_at is not null as dead from public.webhook_failures f
           left join public.stripe_events e on e.id = f.event_id""")}  # fmt: skip
    assert states == {
        "evt_1LegacyCheckoutPay0001": ("error", True), "evt_1LegacyPaymentIntent001": ("error", True),
        "evt_1LegacySubUpdated00001": ("pending", False), "evt_1LegacySubDeleted00001": ("pending", False),
        "evt_1LegacyCheckoutBad0001": (None, True),
    }  # fmt: skip
    # Where the new shape is stricter, the mapping is explicit: the tier's rank beside its name, one row
    # per deployed subscription (erin's two, the complimentary one without Stripe ids).
    subs = await db.fetch(
        "select user_id, tier, plan_tier, current_period_end = expires_at as same from public.user_subscriptions"
    )
    assert len(subs) == 6 and all(r["same"] for r in subs)
    assert {(r["tier"], r["plan_tier"]) for r in subs} == {("architect", 1), ("elite", 3), ("initiate", 2)}
    assert await db.fetchval("select count(*) from public.user_subscriptions where user_id = $1", ERIN) == 2
    # The operator's limits stay; the seed's sixth endpoint is there; nothing else is added.
    config = {r[0]: tuple(r[1:]) for r in await db.fetch(
        "select endpoint_key, requests_per_minute, burst_size, window_size_minutes, is_active from public.rate_limit_config")}  # fmt: skip
    assert config["search"] == (45, 90, 1, True) and config["user_auth"] == (5, 7, 2, True)
    assert config["api_general"][3] is False and config["neuron_export"] == (6, 6, 1, True)
    assert set(config) == {"search", "content_access", "admin_crud", "stripe_webhook", "user_auth", "api_general",
                           "neuron_export"}  # fmt: skip

    # A second run changes nothing.
    assert await migrate.migrate(db) == []


async def test_a_deployed_limit_of_zero_per_minute_does_not_stop_the_upgrade(deployed):
    _, db = deployed
    await db.execute("update public.rate_limit_config set requests_per_minute = 0 where endpoint_key = 'neuron_export'")
    await migrate.migrate(db)
    assert (
        await db.fetchval(
            "select requests_per_minute from public.rate_limit_config where endpoint_key = 'neuron_export'"
        )
        == 0
    )
    got = [await db.fetchval("select allowed from public.f_check_rate_limit('neuron_export', 6, $1)", ALICE)
           for _ in range(2)]  # fmt: skip
    assert got == [True, False]  # its burst, then nothing: it never refills


async def test_the_deployed_api_keeps_its_signatures_and_views_their_columns(deployed):
    _, db = deployed
    funcs_before = await functions(db)
    views_before = {v: await view_columns(db, v) for v in VIEWS}
    await migrate.migrate(db)
    funcs_after = await functions(db)
    for signature, (arguments, result) in funcs_before.items():
        assert funcs_after.get(signature) == (arguments, result), signature
    assert funcs_after["consume_stripe_event(text,text,jsonb)"] == (
        "p_id text, p_type text, p_payload jsonb",
        "boolean",
    )
    assert funcs_after["reprocess_stripe_event(text)"] == ("p_id text", "boolean")
    for view, cols in views_before.items():
        assert cols and (await view_columns(db, view))[: len(cols)] == cols, view
    # Positional calls written for the deployed functions still work.
    assert await db.fetchval("select count(*) from public.f_cleanup_rate_limit_data()") == 2
    assert await db.fetchval("select allowed from public.f_check_rate_limit('search', 1, $1)", ALICE)


async def test_an_upgrade_has_everything_a_fresh_install_has(upgraded, fresh_supabase):
    """The same functions (signatures and result types), tables and columns, policies, triggers, and
    the same privileges for anon and authenticated on them; the deployed extras may stay."""
    _, db = upgraded
    fresh, up = await catalog.fingerprint(fresh_supabase), await catalog.fingerprint(db)
    assert {f[:3] for f in fresh["functions"]} <= {f[:3] for f in up["functions"]}
    assert {r[:2] for r in fresh["relations"]} <= {r[:2] for r in up["relations"]}
    assert {c[:2] for c in fresh["columns"]} <= {c[:2] for c in up["columns"]}
    assert {p[:2] for p in fresh["policies"]} <= {p[:2] for p in up["policies"]}
    assert {t[:2] for t in fresh["triggers"]} <= {t[:2] for t in up["triggers"]}
    for role in ("anon", "authenticated"):
        fresh_privileges, up_privileges = await privileges(fresh_supabase, role), await privileges(db, role)
        differ = [k for k, v in fresh_privileges.items() if k in up_privileges and up_privileges[k] != v]
        assert differ == [], role


# --- admins and access ----------------------------------------------------------------------------


async def test_the_deployed_admins_stay_admins_and_nobody_else_is_one(upgraded):
    _, db = upgraded
    await db.execute("update public.user_subscriptions set status = 'canceled'")  # nothing reaches the starter pack
    async with acting_as(db, "authenticated", ADMIN):  # a JWT without any role claim: user_roles says admin
        assert await db.fetchval("select public.is_admin()")
        assert await db.fetchval("select public.f_soft_delete_bundle($1, 'retired by the studio')", STARTER)
        assert await db.fetchval("select count(*) from public.v_bundles_deleted where id = $1", STARTER) == 1
        assert await db.fetchval("select public.f_restore_bundle($1)", STARTER)
        assert await db.fetchval("select public.requeue_stripe_event('evt_1LegacyCheckoutPay0001')") == 4
    for role, user in (("authenticated", ALICE), ("authenticated", BOB), ("anon", None)):
        async with acting_as(db, role, user):
            assert not await db.fetchval("select public.is_admin()")
            await refused(db, "select public.f_soft_delete_bundle($1)", STARTER)
            await refused(db, "select public.requeue_stripe_event('evt_1LegacyPaymentIntent001')")


async def test_access_only_narrows_and_every_deployed_hole_is_closed(deployed):
    _, db = deployed
    before = {role: await privileges(db, role) for role in ("anon", "authenticated")}
    rls_before = {r[0] for r in await db.fetch(
        "select relname from pg_class where relnamespace = 'public'::regnamespace and relrowsecurity")}  # fmt: skip
    # The holes, as deployed.
    assert before["anon"][("table user_roles", "INSERT")]
    assert before["anon"][("table stripe_events", "SELECT")] and before["anon"][("table webhook_failures", "SELECT")]
    assert before["anon"][("function consume_stripe_event(text,text,jsonb)", "EXECUTE")]
    assert before["anon"][("table v_neuron_public", "UPDATE")]
    assert before["authenticated"][("column neurons.content_full", "SELECT")]

    await migrate.migrate(db)

    for role in ("anon", "authenticated"):
        after = await privileges(db, role)
        widened = [k for k, had in before[role].items() if not had and after.get(k)]
        assert widened == [], role
    assert rls_before <= {r[0] for r in await db.fetch(
        "select relname from pg_class where relnamespace = 'public'::regnamespace and relrowsecurity")}  # fmt: skip
    # Each hole, closed, tried as its attacker would.
    async with acting_as(db, "anon"):
        for sql in (
            "insert into public.user_roles (user_id, role) values ('a0000000-0000-0000-0000-000000000003', 'admin')",
            "select payload from public.stripe_events",
            "select error_message from public.webhook_failures",
            "select public.consume_stripe_event('evt_x', 'invoice.paid', '{}')",
            "select public.reprocess_stripe_event('evt_1LegacyCheckoutPay0001')",
            "update public.v_neuron_public set title = 'pwned'",
            "select content_full from public.neurons",
        ):
            await refused(db, sql)
    async with acting_as(db, "authenticated", BOB):
        await refused(db, "insert into public.user_roles (user_id, role) values ($1, 'admin')", BOB)
    async with acting_as(db, "authenticated", ALICE):
        assert await db.fetch("select content_full from public.neurons") == []  # rows for admins only
        # No more writing oneself a subscription.
        await refused(db, "update public.user_subscriptions set tier = 'elite' where user_id = $1", ALICE)
        assert {r["slug"] for r in await db.fetch("select slug from public.v_neuron_public")} == {
            "focus-loop",
            "deep-work",
            "systems-map",
            "elite-canon",
        }  # published and live only
        assert await db.fetchval("select public.f_can_access_neuron($1, 'architect')", DEEP_WORK)


# Who reads which neuron's content_full after the upgrade, from the deployed data.
CONTENT_ACCESS = [
    (ADMIN, DRAFT_X, True),  # an admin, even a draft
    (ALICE, DEEP_WORK, True),  # architect, active: architect content
    (ALICE, FOCUS_LOOP, True),  # ... and free content
    (ALICE, SYSTEMS_MAP, False),  # ... not initiate content
    (DAVE, DEEP_WORK, False),  # "active", but its period ended
    (ERIN, FOCUS_LOOP, False),  # past_due
    (BOB, FOCUS_LOOP, False),  # canceled
    (None, FOCUS_LOOP, False),  # anon
]


async def test_content_full_after_the_upgrade_goes_to_those_who_paid(upgraded):
    _, db = upgraded
    for who, neuron, allowed in CONTENT_ACCESS:
        async with acting_as(db, "authenticated" if who else "anon", who):
            assert await db.fetchval("select public.f_has_neuron_access($1)", neuron) is allowed, (who, neuron)
            if allowed:
                assert (await db.fetchval("select public.f_neuron_content($1)", neuron)).startswith("FULL:")
            else:
                await refused(db, "select public.f_neuron_content($1)", neuron)


# --- it works ----------------------------------------------------------------------------------


async def test_webhooks_apply_end_to_end_and_the_deployed_columns_stay_current(upgraded):
    url, db = upgraded
    settings = make_settings(url)
    import httpx

    from ingest.app import create_app

    checkout = fixtures.load("checkout.session.completed")  # carol buys systems-map (client_reference_id)
    renewal = fixtures.load("customer.subscription.updated")
    sub = renewal["data"]["object"]
    sub.update(id="sub_1LegacyAlice00000001", customer="cus_LegacyAlice001", metadata={}, status="active")
    sub["items"]["data"][0]["price"]["id"] = "price_1LegacyEliteMonth01"  # the deployed elite plan's monthly price
    period_end = int(await db.fetchval("select extract(epoch from now() + interval '40 days')"))
    sub["items"]["data"][0]["current_period_end"] = sub["current_period_end"] = period_end
    renewal["id"], renewal["created"] = (
        "evt_upgrade_renewal",
        int(await db.fetchval("select extract(epoch from now())")),
    )

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
            for event in (checkout, renewal):
                assert (await post_event(client, event)).status_code == 200
            await app.state.doorbell.flush()
    redis = queue.connect(settings)
    try:
        # The deployed pending events (an admin's reprocess left them so) are due too.
        for event_id in ("evt_1LegacySubUpdated00001", "evt_1LegacySubDeleted00001"):
            await queue.enqueue_event(redis, event_id, 1)
    finally:
        await queue.close(redis)
    await run_worker(settings)

    statuses = dict(await db.fetch("select id, status from public.stripe_events where status <> 'ok' or id in ($1, $2)",
                                   checkout["id"], renewal["id"]))  # fmt: skip
    assert statuses == {checkout["id"]: "ok", renewal["id"]: "ok", "evt_1LegacyCheckoutPay0001": "error",
                        "evt_1LegacyPaymentIntent001": "error"}  # fmt: skip
    assert await db.fetchval("select count(*) from public.user_purchases where user_id = $1 and neuron_id = $2",
                             CAROL, SYSTEMS_MAP) == 1  # fmt: skip
    alice = await db.fetchrow(
        "select * from public.user_subscriptions where stripe_subscription_id = 'sub_1LegacyAlice00000001'"
    )
    assert (alice["tier"], alice["plan_tier"], alice["status"]) == ("elite", 3, "active")
    assert alice["current_period_end"] == alice["expires_at"] and int(alice["expires_at"].timestamp()) == period_end
    # The late deletion of bob's subscription applied; erin's stale update did not overwrite her newer row.
    bob = await db.fetchrow("select status, ended_at from public.user_subscriptions where user_id = $1", BOB)
    assert bob["status"] == "canceled" and bob["ended_at"] is not None
    erin = await db.fetchrow(
        "select status, tier from public.user_subscriptions where stripe_subscription_id = 'sub_1LegacyErin00000002'"
    )
    assert (erin["status"], erin["tier"]) == ("past_due", "initiate")

    # The deployed admin requeues the checkout the deployed code could not apply: alice gets deep-work.
    async with db.transaction():
        await db.execute("select set_config('request.jwt.claims', $1, true)",
                         json.dumps({"role": "authenticated", "sub": str(ADMIN)}))  # fmt: skip
        await db.execute("set local role authenticated")
        assert await db.fetchval("select public.requeue_stripe_event('evt_1LegacyCheckoutPay0001')") == 4
    redis = queue.connect(settings)
    try:
        await queue.enqueue_event(redis, "evt_1LegacyCheckoutPay0001", 4)
    finally:
        await queue.close(redis)
    await run_worker(settings)
    assert await db.fetchval("select status from public.stripe_events where id = 'evt_1LegacyCheckoutPay0001'") == "ok"
    assert await db.fetchval("select count(*) from public.user_purchases where user_id = $1 and neuron_id = $2",
                             ALICE, DEEP_WORK) == 1  # fmt: skip


async def test_the_operator_closes_the_shops_dead_letters_from_the_cli(upgraded):
    """The deployed shop arrives with three dead events (one whose event row is gone) and two pending
    ones. With the worker running, `aipt` alone brings `aipt status` to green."""
    url, db = upgraded
    settings = make_settings(url)
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": settings.redis_url,
        "AIPT_QUEUE_NAME": settings.queue.name,
        "AIPT_OPERATOR": "ops@shop",
        "AIPT_DEV_DATA": "/nonexistent",
    }

    async def aipt_(*args: str):
        return await run_aipt(*args, env=env)

    dead = {r["event_id"] for r in json.loads((await aipt_("dlq", "list", "--json")).stdout)}
    assert dead == {"evt_1LegacyCheckoutPay0001", "evt_1LegacyPaymentIntent001", "evt_1LegacyCheckoutBad0001"}
    orphan = json.loads((await aipt_("events", "show", "evt_1LegacyCheckoutBad0001", "--json")).stdout)
    assert orphan["status"] == "dead (event row gone)" and orphan["payload"] is None
    plans = {p["tier"]: p["prices"] for p in json.loads((await aipt_("plans", "list", "--json")).stdout)}
    assert plans[3] == ["price_1LegacyEliteMonth01", "price_1LegacyEliteYear001"]
    added = await aipt_("plans", "add", "price_1InitiateQuarterly", "2")
    assert added.exit_code == 0, added.output  # the deployed tier row takes it
    assert (
        await db.fetchval("select code::text from public.plans where stripe_price_id = 'price_1InitiateQuarterly'")
        == "initiate"
    )
    full = await aipt_("plans", "add", "price_1InitiateBiannual", "2")
    assert full.exit_code == 1 and "no plan of tier 2 without a price of its own" in full.stderr
    listed = json.loads((await aipt_("content", "list", "--json")).stdout)
    assert {"kind": "neuron", "id": str(DEEP_WORK), "required_tier": "architect"}.items() <= next(
        r for r in listed if r["id"] == str(DEEP_WORK)
    ).items()

    async with live_worker(settings):
        gone = await aipt_(
            "dlq", "discard", "evt_1LegacyCheckoutBad0001", "--reason", "its event row was deleted before the upgrade"
        )
        assert gone.exit_code == 0, gone.output
        # What the deployed code could not apply, ours does: both apply once requeued.
        fixed = await aipt_("dlq", "requeue", "--all", "--yes", "--wait")
        assert fixed.exit_code == 0, fixed.output
        assert {"evt_1LegacyCheckoutPay0001: ok", "evt_1LegacyPaymentIntent001: ok"} <= set(fixed.stdout.splitlines())

        async def pending_applied():
            return await db.fetchval("select count(*) = 0 from public.stripe_events where status = 'pending'")

        await wait_for(pending_applied, timeout=20)  # the sweeper found the deployed pending events
        green = await aipt_("status")
        assert green.exit_code == 0, green.output
    assert json.loads((await aipt_("dlq", "list", "--json")).stdout) == []
    actions = await db.fetch("select event_id, action, actor from public.stripe_event_actions order by id")
    assert [tuple(a) for a in actions] == [
        ("price_1InitiateQuarterly", "add_plan_price", "ops@shop"),
        ("evt_1LegacyCheckoutBad0001", "discard", "ops@shop"),
        ("evt_1LegacyCheckoutPay0001", "requeue", "ops@shop"),
        ("evt_1LegacyPaymentIntent001", "requeue", "ops@shop"),
    ]


async def test_a_failing_run_leaves_the_database_byte_for_byte_as_it_was(deployed):
    url, db = deployed
    before = await pg_dump(url)
    broken = [
        *migrate.discover(),
        migrate.Migration("99_late_failure.sql", "create table public.x (id int);\nselect 1/0;"),
    ]
    with pytest.raises(migrate.MigrationError, match="99_late_failure.sql line 2"):
        await migrate.migrate(db, broken)
    assert await pg_dump(url) == before
    # And anon still reads no content_full: a failed deploy never leaves the shop more exposed.
    async with acting_as(db, "anon"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.fetch("select content_full from public.neurons")


# --- Supabase as it is --------------------------------------------------------------------------


async def test_a_fresh_install_grants_the_same_on_supabase_as_on_plain_postgres(conn, fresh_supabase):
    for role in ("anon", "authenticated"):
        plain, supa = await privileges(conn, role), await privileges(fresh_supabase, role)
        assert {k for k, v in supa.items() if v} == {k for k, v in plain.items() if v}, role


async def test_the_compat_file_changes_nothing_on_supabase_even_without_rights_in_auth(supabase):
    name = f"aipt_compat_{uuid.uuid4().hex[:12]}"
    await _sql(supabase.database_url("postgres"), f'create database "{name}"')
    try:
        # A newer Supabase project: postgres may not create in schema auth, directly or through a role.
        await _sql(supabase.database_url(name, "supabase_admin"),
                   "revoke create on schema auth from postgres, supabase_auth_admin")  # fmt: skip
        db = await asyncpg.connect(supabase.database_url(name))
        try:
            picture = """select n.nspname, n.nspacl::text,
                                (select array_agg(p.oid::regprocedure::text || coalesce(p.proacl::text, '') order by 1)
                                   from pg_proc p where p.pronamespace = n.oid),
                                (select array_agg(c.relname || coalesce(c.relacl::text, '') order by 1)
                                   from pg_class c where c.relnamespace = n.oid)
                         from pg_namespace n where n.nspname in ('auth', 'public') order by 1"""
            roles = "select rolname, rolsuper, rolinherit, rolbypassrls from pg_roles order by 1"
            before = (await db.fetch(picture), await db.fetch(roles))
            (compat,) = [m for m in migrate.discover() if m.name == "00_supabase_compat.sql"]
            await db.execute(compat.sql)
            assert (await db.fetch(picture), await db.fetch(roles)) == before
            assert await migrate.migrate(db)  # and the whole chain applies there
        finally:
            await db.close()
    finally:
        await _sql(supabase.database_url("postgres"), f'drop database if exists "{name}" with (force)')


# --- a database this project's first release migrated ---------------------------------------------

RELEASE_0_1 = [
    migrate.Migration("00_supabase_compat.sql",
                      (migrate.schema_dir().parent / "tests" / "sql" / "release-0.1" / "00_supabase_compat.sql").read_text()),
    *[m for m in migrate.discover() if m.name in {"05_admin.sql", "10_content.sql", "15_billing.sql",
      "18_stripe_events_dlq.sql", "23_neuron_delete_guard.sql", "26_rate_limit.sql", "30_retention.sql"}],
]  # fmt: skip


async def test_a_database_the_first_release_migrated_upgrades_to_what_a_fresh_install_is(conn):
    compat, *_ = RELEASE_0_1
    assert compat.checksum in migrate.discover()[0].replaces  # the version the current 00 stands for
    name = f"aipt_r01_{uuid.uuid4().hex[:12]}"
    db = await asyncpg.connect(await create_database(name))
    try:
        assert await migrate.migrate(db, RELEASE_0_1) == [m.name for m in RELEASE_0_1]
        # Data written through the first release's API.
        user = await db.fetchval(
            "insert into auth.users (id, email) values (gen_random_uuid(), 'r01@example.test') returning id"
        )
        neuron = await db.fetchval(
            "insert into public.neurons (slug, title, body, published) values ('r01', 'R01', 'FULL: r01', true) returning id"
        )
        await db.execute("insert into public.plans (name, tier, stripe_price_id) values ('R01', 2, 'price_r01')")
        bought = fixtures.load("checkout.session.completed")
        bought["data"]["object"].update(client_reference_id=str(user), metadata={"neuron_id": str(neuron)})
        assert await db.fetchval("select public.consume_stripe_event(p_event_id => $1, p_event_type => $2, p_payload => $3)",
                                 bought["id"], bought["type"], json.dumps(bought)) == "ok"  # fmt: skip
        stranger = fixtures.load("customer.subscription.created")
        stranger["data"]["object"].update(customer="cus_r01_unknown", metadata={})
        await db.execute("insert into public.stripe_events (event_id, event_type, created, payload) values ($1, $2, 1, $3)",
                         stranger["id"], stranger["type"], json.dumps(stranger))  # fmt: skip
        for _ in range(2):
            await db.fetch(
                "select * from public.record_stripe_event_failure($1, 'user not known yet', 'PT001', 2)", stranger["id"]
            )
        retired = await db.fetchval(
            "insert into public.neurons (slug, title, body) values ('r01-old', 'Old', 'FULL: old') returning id"
        )
        assert await db.fetchval("select public.f_soft_delete_neuron($1, 'r01 retired')", retired)
        await db.fetch("select * from public.f_check_rate_limit('search', 1, $1)", user)
        await db.execute(
            "update public.rate_limit_config set requests_per_minute = 77, burst_size = 33 where endpoint_key = 'content_access'"
        )
        failure_id = await db.fetchval("select id from public.webhook_failures")

        applied = await migrate.migrate(db)

        assert applied == [m.name for m in migrate.discover() if m.name not in {r.name for r in RELEASE_0_1}]
        await db.execute("drop table public.schema_migrations")
        await conn.execute("drop table public.schema_migrations")
        assert await catalog.fingerprint(db) == await catalog.fingerprint(conn)
        # The data, on the new names.
        assert await db.fetchval("select status from public.stripe_events where id = $1", bought["id"]) == "ok"
        assert await db.fetchval("select count(*) from public.user_purchases where user_id = $1", user) == 1
        dead = await db.fetchrow("select e.error, e.type, f.id, f.failure_count, f.dead_at from public.stripe_events e "
                                 "join public.webhook_failures f on f.event_id = e.id where e.id = $1", stranger["id"])  # fmt: skip
        assert (dead["error"], dead["type"], dead["failure_count"]) == ("user not known yet", stranger["type"], 2)
        assert dead["dead_at"] is not None and dead["id"] == uuid.UUID(int=failure_id)
        assert await db.fetchval("select content_full from public.neurons where id = $1", neuron) == "FULL: r01"
        assert (
            await db.fetchval("select deletion_reason from public.v_neurons_deleted where id = $1", retired)
            == "r01 retired"
        )
        config = {r[0]: tuple(r[1:]) for r in await db.fetch(
            "select endpoint_key, requests_per_minute, burst_size from public.rate_limit_config")}  # fmt: skip
        # The first release's defaults become the seed's, a tuned endpoint stays, unused 'checkout' goes.
        assert config == {"search": (60, 120), "content_access": (77, 33), "admin_crud": (100, 200),
                          "stripe_webhook": (1000, 2000), "user_auth": (10, 20), "api_general": (120, 240)}  # fmt: skip
        assert await db.fetchval("select count(*) from public.rate_limit_buckets") == 1
    finally:
        await db.close()
        await drop_database(name)


# --- aipt migrate --check, through the real command -----------------------------------------------


async def aipt(url: str, *args: str) -> tuple[int, str, str]:
    import os
    import sys

    env = {**os.environ, "DATABASE_URL": url, "LOG_FORMAT": "console"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "aipt", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_check_says_what_the_upgrade_would_do_and_changes_nothing(deployed):
    url, db = deployed
    before = await pg_dump(url)
    code, out, err = await aipt(url, "migrate", "--check")
    assert code == 0, out + err
    assert "database: not built by aipt: its tables are adopted" in out
    assert "table stripe_events (7 rows): +api_version, +created, +livemode" in out
    assert "table webhook_failures (8 rows): rebuilt (id, event_id, context, error, created_at -> " in out
    assert "table user_purchases" in out.split("adopt:")[0]  # created
    assert "function consume_stripe_event(text,text,jsonb): replaced" in out
    assert "refuse:   (nothing)" in out and "a real run would succeed" in out
    assert await pg_dump(url) == before

    code, out, err = await aipt(url, "migrate")
    assert code == 0 and out.startswith(f"applied {len(migrate.discover())} migration(s)"), out + err
    code, out, _ = await aipt(url, "migrate", "--check")
    assert code == 0 and "database: built by aipt" in out and "pending:  (none)" in out


async def test_check_and_migrate_refuse_a_table_they_do_not_know_before_changing_anything(supabase):
    name = f"aipt_odd_{uuid.uuid4().hex[:12]}"
    await _sql(supabase.database_url("postgres"), f'create database "{name}"')
    url = supabase.database_url(name)
    try:
        await _sql(url, "create table public.stripe_events (evt text, body json)")
        before = await pg_dump(url)
        code, out, _ = await aipt(url, "migrate", "--check")
        assert code == 1
        assert "refuse:   07_adopt_deployed_schema.sql line" in out and "cannot adopt public.stripe_events" in out
        assert "a real run would fail, and would change nothing" in out
        code, out, err = await aipt(url, "migrate")
        assert code == 1 and out == ""
        (line,) = err.strip().splitlines()
        assert (
            line.startswith("error: 07_adopt_deployed_schema.sql line ") and "cannot adopt public.stripe_events" in line
        )
        assert "hint: these tables exist with a shape this project does not know" in line
        assert await pg_dump(url) == before
    finally:
        await _sql(supabase.database_url("postgres"), f'drop database if exists "{name}" with (force)')
