"""Rate limiting (26_rate_limit.sql): the bucket arithmetic, who pays, concurrency, views, cleanup, RLS.

Time is simulated by backdating a bucket's last_refill inside one transaction, where now() stands still:
refill is then exact, not "about right".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid

import asyncpg
import pytest

from tests.roles import acting_as
from tests.servers import create_database, drop_database

CHECK = "select * from public.f_check_rate_limit(p_endpoint_key => $1, p_tokens_required => $2, p_user_id => $3)"
# The seed's six endpoints: (requests per minute, burst), window 1.
SEED = {
    "search": (60, 120),
    "content_access": (30, 60),
    "admin_crud": (100, 200),
    "stripe_webhook": (1000, 2000),
    "user_auth": (10, 20),
    "api_general": (120, 240),
}
SIX = set(SEED)


async def endpoint(conn, rpm: int, burst: int, **extra) -> str:
    """A fresh endpoint of our own, so tests do not depend on the seed's numbers."""
    key = f"t_{uuid.uuid4().hex[:8]}"
    cols = {"endpoint_key": key, "requests_per_minute": rpm, "burst_size": burst, **extra}
    names = ", ".join(cols)
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    await conn.execute(f"insert into public.rate_limit_config ({names}) values ({params})", *cols.values())
    return key


async def check(conn, key: str, tokens: int | None = 1, user=None) -> asyncpg.Record:
    return await conn.fetchrow(CHECK, key, tokens, user)


async def backdate(conn, key: str, seconds: float) -> None:
    """Pretend `seconds` passed since the bucket(s) of this endpoint last refilled."""
    await conn.execute(
        "update public.rate_limit_buckets set last_refill = last_refill - make_interval(secs => $2) where endpoint_key = $1",
        key,
        seconds,
    )


async def buckets(conn, key: str) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch("select * from public.rate_limit_buckets where endpoint_key = $1", key)
    return {r["bucket_key"]: r for r in rows}


async def as_superuser(conn) -> None:
    """Inside acting_as: drop back to the session's superuser role to inspect what the block did."""
    await conn.execute("reset role")


@pytest.fixture(scope="module")
async def module_db(template_db):
    name = f"aipt_rl_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(await create_database(name, template=template_db))
    yield conn
    await conn.close()
    await drop_database(name)


@pytest.fixture
async def tx(module_db):
    """One database for the module, each test in a transaction rolled back at its end (now() stands still).

    Tests that need real commits (concurrency) take `conn`/`db_url`: a fresh database of their own.
    """
    tr = module_db.transaction()
    await tr.start()
    yield module_db
    await tr.rollback()


# -----------------------------------------------------------------------------
# The bucket
# -----------------------------------------------------------------------------


async def test_seed_has_the_six_endpoints(tx):
    rows = await tx.fetch("select * from public.rate_limit_config")
    assert {r["endpoint_key"]: (r["requests_per_minute"], r["burst_size"]) for r in rows} == SEED
    assert all(r["is_active"] and r["log_mode"] == "all" and r["window_size_minutes"] == 1 for r in rows)


async def test_an_endpoint_that_never_refills(tx):
    """requests_per_minute = 0 (the deployed shop allowed it): the burst, then nothing, for good."""
    key = await endpoint(tx, rpm=0, burst=2)
    user = uuid.uuid4()
    got = [await check(tx, key, 1, user) for _ in range(2)]
    assert [r["allowed"] for r in got] == [True, True]
    refused = await tx.fetchrow(
        "select allowed, reset_time = 'infinity' as never, reason from public.f_check_rate_limit($1, 1, $2)", key, user
    )
    assert (refused["allowed"], refused["never"]) == (False, True)
    assert "does not refill" in refused["reason"]
    await backdate(tx, key, 3600)
    assert not (await check(tx, key, 1, user))["allowed"]


async def test_burst_then_steady_rate(tx):
    """10/min, burst 5: five at once, then a call every 3 s gets exactly one in two (10 a minute)."""
    key = await endpoint(tx, rpm=10, burst=5)
    user = uuid.uuid4()
    async with tx.transaction():
        burst = [await check(tx, key, 1, user) for _ in range(6)]
        assert [r["allowed"] for r in burst] == [True] * 5 + [False]
        assert [r["tokens_remaining"] for r in burst] == [4, 3, 2, 1, 0, 0]
        assert "rate limit exceeded" in burst[-1]["reason"]
        assert all(r["reason"] is None for r in burst[:5])

        allowed = 0
        for _ in range(20):  # one simulated minute
            await backdate(tx, key, 3)
            allowed += (await check(tx, key, 1, user))["allowed"]
        assert allowed == 10


async def test_refill_is_exact_and_fractional(tx):
    key = await endpoint(tx, rpm=10, burst=5)
    user = uuid.uuid4()
    async with tx.transaction():
        now = await tx.fetchval("select now()")
        for _ in range(5):
            await check(tx, key, 1, user)

        await backdate(tx, key, 3)  # half a token: not enough, and not lost
        r = await check(tx, key, 1, user)
        assert not r["allowed"] and r["tokens_remaining"] == 0
        assert r["reset_time"] == now + dt.timedelta(seconds=3)  # the other half takes 3 s
        (b,) = (await buckets(tx, key)).values()
        assert b["tokens_remaining"] == 0.5 and b["last_refill"] == now and not b["last_allowed"]

        await backdate(tx, key, 3)  # 0.5 + 0.5
        r = await check(tx, key, 1, user)
        assert r["allowed"] and r["tokens_remaining"] == 0 and r["reset_time"] == now + dt.timedelta(seconds=6)

        await backdate(tx, key, 15)  # 2.5 tokens
        r = await check(tx, key, 2, user)
        assert r["allowed"] and r["tokens_remaining"] == 0
        (b,) = (await buckets(tx, key)).values()
        assert b["tokens_remaining"] == 0.5 and b["request_count"] == 8

        await backdate(tx, key, 3600)  # capped at the burst
        r = await check(tx, key, 1, user)
        assert r["allowed"] and r["tokens_remaining"] == 4 and r["reset_time"] == now


async def test_reset_time_says_when_this_request_fits(tx):
    key = await endpoint(tx, rpm=30, burst=4)  # a token every 2 s
    user = uuid.uuid4()
    async with tx.transaction():
        now = await tx.fetchval("select now()")
        assert (await check(tx, key, 3, user))["allowed"]  # 1 left
        r = await check(tx, key, 4, user)  # needs 3 more: 6 s
        assert not r["allowed"] and r["reset_time"] == now + dt.timedelta(seconds=6)
        assert "4 token(s) needed, 1 available" in r["reason"]


async def concurrent_checks(db_url: str, n: int, key: str, user: uuid.UUID) -> list[asyncpg.Record]:
    """n checks at once, each on its own connection."""
    pool = await asyncpg.create_pool(db_url, min_size=n, max_size=n)
    try:
        return await asyncio.gather(*(pool.fetchrow(CHECK, key, 1, user) for _ in range(n)))
    finally:
        await pool.close()


async def test_fifty_concurrent_calls_on_a_bucket_of_twenty_allow_exactly_twenty(db_url, conn):
    key = await endpoint(conn, rpm=1, burst=20)
    results = await concurrent_checks(db_url, 50, key, uuid.uuid4())
    assert sum(r["allowed"] for r in results) == 20
    (b,) = (await buckets(conn, key)).values()
    assert b["request_count"] == 50 and b["tokens_remaining"] < 1
    log = await conn.fetch("select was_allowed from public.rate_limit_log where endpoint_key = $1", key)
    assert len(log) == 50 and sum(r["was_allowed"] for r in log) == 20


async def test_many_concurrent_first_calls_make_one_bucket(db_url, conn):
    key = await endpoint(conn, rpm=1, burst=20)
    user = uuid.uuid4()
    results = await concurrent_checks(db_url, 10, key, user)
    assert all(r["allowed"] for r in results)
    assert sorted(r["tokens_remaining"] for r in results) == list(range(10, 20))
    assert list(await buckets(conn, key)) == [f"user:{user}"]


@pytest.mark.parametrize(("first_ends", "second_leaves", "requests"), [("commit", 3, 2), ("rollback", 4, 1)])
async def test_first_call_race_waits_instead_of_colliding(db_url, conn, first_ends, second_leaves, requests):
    """Two first calls for one bucket: the second waits on the first's insert, then spends from its row
    (or inserts its own if the first rolled back)."""
    key = await endpoint(conn, rpm=1, burst=5)
    user = uuid.uuid4()
    first, second = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        tr = first.transaction()
        await tr.start()
        assert (await check(first, key, 1, user))["tokens_remaining"] == 4
        waiting = asyncio.create_task(check(second, key, 1, user))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # blocked on the uncommitted insert, not failed
        await getattr(tr, first_ends)()
        r = await asyncio.wait_for(waiting, 5)
        assert r["allowed"] and r["tokens_remaining"] == second_leaves
    finally:
        await first.close()
        await second.close()
    (b,) = (await buckets(conn, key)).values()
    assert b["request_count"] == requests


# -----------------------------------------------------------------------------
# Endpoints and arguments
# -----------------------------------------------------------------------------


async def test_unknown_endpoint_raises_a_clear_error(tx):
    for key, shown in (("no_such_thing", "'no_such_thing'"), (None, "NULL")):
        with pytest.raises(asyncpg.InvalidParameterValueError, match=f"unknown rate-limit endpoint {shown}"):
            async with tx.transaction():
                await check(tx, key)


async def test_inactive_endpoint_is_not_limited(tx):
    key = await endpoint(tx, rpm=1, burst=1, is_active=False)
    for _ in range(3):
        r = await check(tx, key, 1, uuid.uuid4())
        assert r["allowed"] and r["tokens_remaining"] == 1
        assert "rate limiting is off" in r["reason"]
    assert await buckets(tx, key) == {}
    assert await tx.fetchval("select count(*) from public.rate_limit_log where endpoint_key = $1", key) == 0


@pytest.mark.parametrize("tokens", [0, -1, 6, None])
async def test_bad_tokens_required_is_refused_without_spending(tx, tokens):
    key = await endpoint(tx, rpm=10, burst=5)
    r = await check(tx, key, tokens, uuid.uuid4())
    assert not r["allowed"] and r["tokens_remaining"] is None and r["reset_time"] is None
    assert "p_tokens_required must be between 1 and the burst size" in r["reason"] and "(5)" in r["reason"]
    assert await buckets(tx, key) == {}


async def test_wrappers_spend_their_endpoint_and_are_volatile(tx):
    user = uuid.uuid4()
    for fn, key in [
        ("f_rate_limit_search", "search"),
        ("f_rate_limit_content_access", "content_access"),
        ("f_rate_limit_admin_crud", "admin_crud"),
    ]:
        burst = await tx.fetchval("select burst_size from public.rate_limit_config where endpoint_key = $1", key)
        async with tx.transaction():
            got = [await tx.fetchval(f"select public.{fn}(p_user_id => $1)", user) for _ in range(burst + 1)]
            assert got == [True] * burst + [False]
        volatile = await tx.fetchval(
            "select provolatile::text from pg_catalog.pg_proc where oid = $1::regprocedure", f"public.{fn}(uuid)"
        )
        assert volatile == "v"


async def test_functions_are_locked_down(tx):
    rows = await tx.fetch(
        """select p.oid::regprocedure::text as sig, p.proconfig, p.prosecdef, p.provolatile::text,
                  pg_catalog.has_function_privilege('public', p.oid, 'execute') as public_exec
           from pg_catalog.pg_proc p
           where p.pronamespace = 'public'::regnamespace and p.proname ~ '^f_.*rate_limit'"""
    )
    by_sig = {r["sig"]: r for r in rows}
    assert set(by_sig) == {
        "f_check_rate_limit(text,integer,uuid)",
        "f_rate_limit_search(uuid)",
        "f_rate_limit_content_access(uuid)",
        "f_rate_limit_admin_crud(uuid)",
        "f_cleanup_rate_limit_data()",
    }
    for r in rows:
        assert r["proconfig"] == ['search_path=""'] and r["provolatile"] == "v" and not r["public_exec"], r["sig"]
    assert by_sig["f_check_rate_limit(text,integer,uuid)"]["prosecdef"]
    assert by_sig["f_cleanup_rate_limit_data()"]["prosecdef"]
    assert not await tx.fetchval(
        "select pg_catalog.has_function_privilege('anon', 'public.f_cleanup_rate_limit_data()', 'execute')"
    )


# -----------------------------------------------------------------------------
# Who pays
# -----------------------------------------------------------------------------


async def test_a_user_passing_someone_elses_id_spends_their_own_tokens(tx):
    key = await endpoint(tx, rpm=1, burst=3)
    me, victim = uuid.uuid4(), uuid.uuid4()
    async with acting_as(tx, "authenticated", me):
        got = [(await check(tx, key, 1, victim))["allowed"] for _ in range(4)]
        assert got == [True, True, True, False]
        await as_superuser(tx)
        assert set(await buckets(tx, key)) == {f"user:{me}"}
        assert (await check(tx, key, 1, victim))["tokens_remaining"] == 2  # the victim's bucket is untouched


async def test_a_user_passing_no_id_is_still_themselves(tx):
    key = await endpoint(tx, rpm=1, burst=3)
    me = uuid.uuid4()
    async with acting_as(tx, "authenticated", me):
        await check(tx, key, 1, None)
        await check(tx, key, 1, me)
        await as_superuser(tx)
        b = await buckets(tx, key)
        assert set(b) == {f"user:{me}"} and b[f"user:{me}"]["user_id"] == me and b[f"user:{me}"]["request_count"] == 2


async def test_an_admin_jwt_does_not_make_p_user_id_count(tx):
    key = await endpoint(tx, rpm=1, burst=3)
    admin, other = uuid.uuid4(), uuid.uuid4()
    async with acting_as(tx, "authenticated", admin, admin=True):
        await check(tx, key, 1, other)
        await as_superuser(tx)
        assert set(await buckets(tx, key)) == {f"user:{admin}"}


async def test_service_role_and_superuser_act_for_the_user_they_name(tx):
    key = await endpoint(tx, rpm=1, burst=3)
    user = uuid.uuid4()
    async with acting_as(tx, "service_role"):
        await check(tx, key, 1, user)
        await check(tx, key, 1, None)
    async with tx.transaction():
        await check(tx, key, 1, user)  # a superuser session
        await check(tx, key, 1, None)
        b = await buckets(tx, key)
        assert set(b) == {f"user:{user}", "service"}
        assert b[f"user:{user}"]["user_id"] == user and b["service"]["user_id"] is None


async def test_service_callers_without_a_user_share_one_bucket_not_the_anonymous_one(tx):
    """ingest's stripe_webhook check: a trusted caller, no user -> one 'service' bucket anonymous callers cannot drain."""
    key = await endpoint(tx, rpm=1, burst=2)
    async with acting_as(tx, "anon"):
        assert [(await check(tx, key))["allowed"] for _ in range(3)] == [True, True, False]
        await as_superuser(tx)
        assert [(await check(tx, key))["allowed"] for _ in range(3)] == [True, True, False]
        assert set(await buckets(tx, key)) == {"anon", "service"}


async def test_a_member_of_service_role_is_trusted_like_it(tx):
    """ingest may connect as its own role: granted service_role, it names users like service_role does."""
    role = f"rl_member_{uuid.uuid4().hex[:8]}"
    key = await endpoint(tx, rpm=1, burst=3)
    user = uuid.uuid4()
    # Granted to the test's own role too, so it may SET ROLE without being a superuser (as on Supabase).
    await tx.execute(f"create role {role} nologin; grant service_role to {role}; grant {role} to current_user")
    await tx.execute(f"set local role {role}")
    await check(tx, key, 1, user)
    await check(tx, key, 1, None)
    await tx.execute("reset role")
    assert set(await buckets(tx, key)) == {f"user:{user}", "service"}


async def test_the_ingest_call_for_stripe_webhook(tx):
    """The statement ingest runs (docs/rate-limiting.md): one shared bucket, Retry-After in whole seconds."""
    sql = """select allowed, reset_time,
                    greatest(1, ceil(extract(epoch from reset_time - now())))::int as retry_after_seconds
             from public.f_check_rate_limit(p_endpoint_key => 'stripe_webhook')"""
    burst = await tx.fetchval("select burst_size from public.rate_limit_config where endpoint_key = 'stripe_webhook'")
    got = [await tx.fetchrow(sql) for _ in range(burst + 1)]
    assert all(r["allowed"] for r in got[:-1]) and not got[-1]["allowed"]
    assert got[-1]["retry_after_seconds"] == 1  # 600/min: the next token is 0.1 s away
    assert set(await buckets(tx, "stripe_webhook")) == {"service"}


async def test_anonymous_without_headers_share_one_bucket_and_null_is_no_bypass(tx):
    key = await endpoint(tx, rpm=1, burst=2)
    async with acting_as(tx, "anon"):
        got = [(await check(tx, key, 1, u))["allowed"] for u in (None, uuid.uuid4(), None)]
        assert got == [True, True, False]  # a made-up p_user_id buys nothing either
        await as_superuser(tx)
        b = await buckets(tx, key)
        assert set(b) == {"anon"} and b["anon"]["user_id"] is None


async def test_a_jwt_without_a_user_is_anonymous(tx):
    key = await endpoint(tx, rpm=1, burst=1)
    async with acting_as(tx, "authenticated", None):
        assert [(await check(tx, key))["allowed"] for _ in range(2)] == [True, False]
        await as_superuser(tx)
        assert set(await buckets(tx, key)) == {"anon"}


@pytest.mark.parametrize(
    ("headers", "bucket", "logged_ip"),
    [
        # The default: the last entry, the one the proxy in front of PostgREST appended. Whatever a client
        # writes lands to its left.
        ({"x-forwarded-for": "203.0.113.7, 10.0.0.1, 198.51.100.2"}, "ip:198.51.100.2", "198.51.100.2"),
        ({"x-forwarded-for": " 198.51.100.4 ", "x-real-ip": "10.9.9.9"}, "ip:198.51.100.4", "198.51.100.4"),
        ({"x-real-ip": "198.51.100.5"}, "anon", None),  # not the configured header
        ({"x-forwarded-for": "2001:db8:1:2:aaaa::1"}, "ip:2001:db8:1:2::/64", "2001:db8:1:2:aaaa::1"),
        ({"x-forwarded-for": "::ffff:192.0.2.77"}, "ip:192.0.2.77", "192.0.2.77"),  # IPv4-mapped: the IPv4 address
        ({"x-forwarded-for": "not-an-address"}, "anon", None),
        ({"x-forwarded-for": "", "user-agent": "x"}, "anon", None),
        ({}, "anon", None),
    ],
)
async def test_anonymous_callers_are_limited_by_client_address(tx, headers, bucket, logged_ip):
    key = await endpoint(tx, rpm=1, burst=2)
    async with acting_as(tx, "anon", headers=headers):
        assert [(await check(tx, key))["allowed"] for _ in range(3)] == [True, True, False]
        await as_superuser(tx)
        assert set(await buckets(tx, key)) == {bucket}
        ips = await tx.fetch("select ip_address from public.rate_limit_log where endpoint_key = $1", key)
        assert {None if r["ip_address"] is None else str(r["ip_address"]) for r in ips} == {logged_ip}


async def test_a_client_cannot_choose_its_bucket_by_sending_its_own_header(tx):
    """The attack of the review: rotate X-Forwarded-For to get a fresh bucket each call (50 of 50 on a burst
    of 5), or name a victim's address to drain theirs. The proxy appends the real address last."""
    key = await endpoint(tx, rpm=1, burst=5)
    allowed = 0
    async with acting_as(tx, "anon"):
        for i in range(50):
            forged = f"10.{i // 256}.{i % 256}.1, 192.0.2.99"  # the victim's address, then the proxy's entry
            await tx.execute(
                "select set_config('request.headers', $1, true)", f'{{"x-forwarded-for": "{forged}, 203.0.113.5"}}'
            )
            allowed += (await check(tx, key))["allowed"]
        await as_superuser(tx)
        assert allowed == 5
        assert set(await buckets(tx, key)) == {"ip:203.0.113.5"}  # 192.0.2.99's bucket was never touched


@pytest.mark.parametrize(("settings", "headers", "bucket"), [
    ({"forwarded_for_position": 2}, {"x-forwarded-for": "6.6.6.6, 198.51.100.8, 104.16.0.1"}, "ip:198.51.100.8"),
    ({"forwarded_for_position": 3}, {"x-forwarded-for": "104.16.0.1"}, "anon"),  # not that many hops: shared
    ({"client_address_header": "cf-connecting-ip"}, {"cf-connecting-ip": "198.51.100.9", "x-forwarded-for": "1.1.1.1"},
     "ip:198.51.100.9"),
])  # fmt: skip
async def test_the_trusted_place_is_a_setting(tx, settings, headers, bucket):
    key = await endpoint(tx, rpm=1, burst=1)
    for column, value in settings.items():
        await tx.execute(f"update public.rate_limit_settings set {column} = $1", value)
    async with acting_as(tx, "anon", headers=headers):
        await check(tx, key)
        await as_superuser(tx)
        assert set(await buckets(tx, key)) == {bucket}


async def test_anonymous_buckets_are_bounded(tx):
    key = await endpoint(tx, rpm=1, burst=1)
    await tx.execute("update public.rate_limit_settings set anonymous_buckets_max = 3")
    async with acting_as(tx, "anon"):
        for i in range(10):
            await tx.execute("select set_config('request.headers', $1, true)", f'{{"x-forwarded-for": "192.0.2.{i}"}}')
            await check(tx, key)
        # A caller that has a bucket keeps it.
        await tx.execute("select set_config('request.headers', $1, true)", '{"x-forwarded-for": "192.0.2.0"}')
        await check(tx, key)
        await as_superuser(tx)
        assert set(await buckets(tx, key)) == {"ip:192.0.2.0", "ip:192.0.2.1", "ip:192.0.2.2", "anon"}


async def test_only_admins_see_and_change_where_addresses_come_from(tx):
    for role, user, admin in (("anon", None, False), ("authenticated", uuid.uuid4(), False)):
        async with acting_as(tx, role, user, admin=admin):
            with pytest.raises(asyncpg.InsufficientPrivilegeError) if role == "anon" else contextlib.nullcontext():
                async with tx.transaction():
                    assert await tx.fetch("select * from public.rate_limit_settings") == []
    async with acting_as(tx, "authenticated", uuid.uuid4(), admin=True):
        assert await tx.fetchval("update public.rate_limit_settings set forwarded_for_position = 2 returning 1") == 1


async def test_different_addresses_have_different_buckets_and_ipv6_is_grouped_by_64(tx):
    key = await endpoint(tx, rpm=1, burst=1)
    results = {}
    async with acting_as(tx, "anon"):
        for addr in ["192.0.2.1", "192.0.2.2", "192.0.2.1", "2001:db8::1", "2001:db8::ffff", "2001:db8:0:1::1"]:
            await tx.execute("select set_config('request.headers', $1, true)", f'{{"x-forwarded-for": "{addr}"}}')
            results.setdefault(addr, []).append((await check(tx, key))["allowed"])
    assert results == {
        "192.0.2.1": [True, False],
        "192.0.2.2": [True],
        "2001:db8::1": [True],
        "2001:db8::ffff": [False],  # same /64 as 2001:db8::1
        "2001:db8:0:1::1": [True],
    }


async def test_an_authenticated_user_is_limited_by_id_not_address(tx):
    key = await endpoint(tx, rpm=1, burst=2)
    me = uuid.uuid4()
    async with acting_as(tx, "authenticated", me, headers={"x-forwarded-for": "192.0.2.50"}):
        await check(tx, key)
        await as_superuser(tx)
        assert set(await buckets(tx, key)) == {f"user:{me}"}
        logged = await tx.fetchrow("select user_id, ip_address from public.rate_limit_log where endpoint_key = $1", key)
        assert logged["user_id"] == me and logged["ip_address"] is None  # a user is known by id alone


# -----------------------------------------------------------------------------
# The log, its mode, the views, cleanup
# -----------------------------------------------------------------------------


async def test_log_mode_all_logs_every_request_and_blocked_only_the_refusals(tx):
    key_all = await endpoint(tx, rpm=1, burst=2)
    key_blocked = await endpoint(tx, rpm=1, burst=2, log_mode="blocked")
    user = uuid.uuid4()
    for key in (key_all, key_blocked):
        for _ in range(3):
            await check(tx, key, 1, user)
    rows = await tx.fetch(
        """select endpoint_key, user_id, was_allowed, tokens_consumed, tokens_remaining from public.rate_limit_log
           where endpoint_key = any($1::text[]) order by request_timestamp""",
        [key_all, key_blocked],
    )
    logged_all = [
        (r["was_allowed"], r["tokens_consumed"], r["tokens_remaining"]) for r in rows if r["endpoint_key"] == key_all
    ]
    assert logged_all == [(True, 1, 1.0), (True, 1, 0.0), (False, 0, 0.0)]
    assert [r["was_allowed"] for r in rows if r["endpoint_key"] == key_blocked] == [False]
    assert {r["user_id"] for r in rows} == {user}
    with pytest.raises(asyncpg.CheckViolationError):
        await tx.execute("update public.rate_limit_config set log_mode = 'some' where endpoint_key = $1", key_all)


async def test_config_changes_are_admin_only(tx):
    async with acting_as(tx, "authenticated", uuid.uuid4()):
        assert len(await tx.fetch("select * from public.rate_limit_config")) == 6  # everyone may read
        assert await tx.execute("update public.rate_limit_config set burst_size = 1000") == "UPDATE 0"
        assert await tx.execute("update public.rate_limit_config set log_mode = 'blocked'") == "UPDATE 0"
        assert await tx.execute("delete from public.rate_limit_config") == "DELETE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tx.execute("insert into public.rate_limit_config values ('mine', 1000, 1000)")
    async with acting_as(tx, "anon"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tx.execute("update public.rate_limit_config set burst_size = 1000")
    async with acting_as(tx, "authenticated", uuid.uuid4(), admin=True):
        assert (
            await tx.execute("update public.rate_limit_config set log_mode = 'blocked' where endpoint_key = 'search'")
            == "UPDATE 1"
        )
        await tx.execute(
            "insert into public.rate_limit_config (endpoint_key, requests_per_minute, burst_size) values ('new', 5, 5)"
        )
    async with acting_as(tx, "service_role"):
        assert (
            await tx.execute("update public.rate_limit_config set burst_size = 11 where endpoint_key = 'search'")
            == "UPDATE 1"
        )


async def _log(conn, rows) -> None:
    await conn.executemany(
        """insert into public.rate_limit_log (request_timestamp, endpoint_key, user_id, ip_address, was_allowed,
                                             tokens_consumed, tokens_remaining)
           values (now() - make_interval(mins => $1), $2, $3, $4::inet, $5, case when $5 then 1 else 0 end, 0)""",
        rows,
    )


async def _bucket(conn, key: str, bucket_key: str, idle_minutes: float, user=None) -> None:
    await conn.execute(
        """insert into public.rate_limit_buckets (endpoint_key, bucket_key, user_id, tokens_remaining, last_refill, last_request)
           values ($1, $2, $3, 1, now() - make_interval(mins => $4), now() - make_interval(mins => $4))""",
        key,
        bucket_key,
        user,
        idle_minutes,
    )


async def test_dashboard_counts_a_known_log_without_fan_out(tx):
    a, b = uuid.uuid4(), uuid.uuid4()
    # search: 3 buckets active in the last hour (one idle for 2 h), 4 requests in the hour (1 blocked) + 2 older.
    for bucket_key, idle, user in [
        (f"user:{a}", 5, a),
        (f"user:{b}", 30, b),
        ("ip:192.0.2.1", 59, None),
        ("anon", 120, None),
    ]:
        await _bucket(tx, "search", bucket_key, idle, user)
    await _log(tx, [
        (1, "search", a, None, True), (2, "search", a, None, False), (10, "search", b, None, True),
        (50, "search", None, "192.0.2.1", True), (61, "search", a, None, False), (300, "search", b, None, True),
        # user_auth: 2 requests, both blocked; no buckets in the last hour.
        (3, "user_auth", a, None, False), (4, "user_auth", a, None, False),
    ])  # fmt: skip
    rows = {r["endpoint_key"]: r for r in await tx.fetch("select * from public.v_rate_limit_dashboard")}
    assert set(rows) == SIX
    assert list(rows["search"].keys()) == [  # the deployed view's columns, in its order, then log_mode
        "endpoint_key",
        "requests_per_minute",
        "burst_size",
        "is_active",
        "active_buckets",
        "requests_last_hour",
        "blocked_last_hour",
        "block_rate_percent",
        "log_mode",
    ]
    s, c, w = rows["search"], rows["user_auth"], rows["stripe_webhook"]
    assert (s["active_buckets"], s["requests_last_hour"], s["blocked_last_hour"], s["block_rate_percent"]) == (
        3,
        4,
        1,
        25,
    )
    assert (c["active_buckets"], c["requests_last_hour"], c["blocked_last_hour"], c["block_rate_percent"]) == (
        0,
        2,
        2,
        100,
    )
    # No requests: no rate (null), as the deployed view had it.
    assert (w["active_buckets"], w["requests_last_hour"], w["blocked_last_hour"], w["block_rate_percent"]) == (
        0,
        0,
        0,
        None,
    )
    assert s["log_mode"] == "all" and s["is_active"]


async def test_top_users_per_bucket_with_emails_for_admins(tx):
    a, b = uuid.uuid4(), uuid.uuid4()
    await tx.execute("insert into auth.users (id, email) values ($1, 'a@example.com'), ($2, 'b@example.com')", a, b)
    for endpoint_key, bucket_key, user in [
        ("search", f"user:{a}", a),
        ("user_auth", f"user:{a}", a),
        ("search", f"user:{b}", b),
        ("search", "ip:198.51.100.7", None),
    ]:
        await _bucket(tx, endpoint_key, bucket_key, 1, user)
    await _log(tx, [
        *[(m, "search", a, "192.0.2.9", m % 2 == 0) for m in range(1, 6)],  # 5, 3 blocked (odd m)
        (7, "user_auth", a, None, True),
        *[(m, "search", b, None, True) for m in range(1, 4)],  # 3
        *[(m, "search", None, "198.51.100.7", False) for m in range(1, 5)],  # 4 anonymous, all blocked
        (25 * 60, "search", b, None, True),  # older than a day
    ])  # fmt: skip
    rows = await tx.fetch("select * from public.v_rate_limit_top_users")
    assert list(rows[0].keys()) == [  # the deployed view's columns, in its order, then this project's
        "email",
        "endpoint_key",
        "tokens_remaining",
        "request_count",
        "last_request",
        "requests_last_24h",
        "blocked_last_24h",
        "user_id",
        "bucket_key",
    ]
    got = [
        (r["email"], r["endpoint_key"], r["requests_last_24h"], r["blocked_last_24h"], r["bucket_key"]) for r in rows
    ]
    assert got == [
        ("a@example.com", "search", 5, 3, f"user:{a}"),
        (None, "search", 4, 4, "ip:198.51.100.7"),
        ("b@example.com", "search", 3, 0, f"user:{b}"),
        ("a@example.com", "user_auth", 1, 0, f"user:{a}"),
    ]


async def test_views_are_admin_only(tx):
    user = uuid.uuid4()
    await _bucket(tx, "search", f"user:{user}", 1, user)
    await _log(tx, [(1, "search", user, None, True)])
    for view in ("v_rate_limit_dashboard", "v_rate_limit_top_users"):
        async with acting_as(tx, "authenticated", uuid.uuid4()):
            assert await tx.fetch(f"select * from public.{view}") == []
        async with acting_as(tx, "anon"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await tx.fetch(f"select * from public.{view}")
        for role, admin in (("authenticated", True), ("service_role", False)):
            async with acting_as(tx, role, uuid.uuid4() if admin else None, admin=admin):
                assert len(await tx.fetch(f"select * from public.{view}")) >= 1


async def test_cleanup_from_a_scheduler_without_jwt(tx):
    key = await endpoint(tx, rpm=1, burst=1)
    await _log(tx, [
        (8 * 24 * 60, key, None, None, True), (7 * 24 * 60 + 1, key, None, None, True),
        (6 * 24 * 60, key, None, None, True), (1, key, None, None, False),
    ])  # fmt: skip
    await _bucket(tx, key, "user:old", 31 * 24 * 60)
    await _bucket(tx, key, "user:recent", 29 * 24 * 60)
    rows = await tx.fetch("select * from public.f_cleanup_rate_limit_data()")  # a superuser, no claims
    assert [(r["table_name"], r["deleted_count"]) for r in rows] == [("rate_limit_log", 2), ("rate_limit_buckets", 1)]
    assert all(isinstance(r["cleanup_date"], dt.datetime) for r in rows)
    assert await tx.fetchval("select count(*) from public.rate_limit_log where endpoint_key = $1", key) == 2
    assert set(await buckets(tx, key)) == {"user:recent"}
    async with acting_as(tx, "service_role"):
        assert len(await tx.fetch("select * from public.f_cleanup_rate_limit_data()")) == 2


async def test_cleanup_is_refused_to_ordinary_callers(tx):
    async with acting_as(tx, "authenticated", uuid.uuid4()):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="for admins"):
            await tx.fetch("select * from public.f_cleanup_rate_limit_data()")
    async with acting_as(tx, "anon"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tx.fetch("select * from public.f_cleanup_rate_limit_data()")


# -----------------------------------------------------------------------------
# Row-level security
# -----------------------------------------------------------------------------


async def test_a_user_sees_only_their_own_buckets_and_log_rows(tx):
    key = await endpoint(tx, rpm=1, burst=5)
    a, b = uuid.uuid4(), uuid.uuid4()
    for user in (a, a, b):
        await check(tx, key, 1, user)
    await check(tx, key, 1, None)  # the shared service bucket
    for me, n_log in ((a, 2), (b, 1)):
        async with acting_as(tx, "authenticated", me):
            mine = await tx.fetch("select user_id from public.rate_limit_buckets")
            assert [r["user_id"] for r in mine] == [me]
            log = await tx.fetch("select user_id from public.rate_limit_log")
            assert [r["user_id"] for r in log] == [me] * n_log
    async with acting_as(tx, "authenticated", uuid.uuid4(), admin=True):
        assert await tx.fetchval("select count(*) from public.rate_limit_buckets where endpoint_key = $1", key) == 3
        assert await tx.fetchval("select count(*) from public.rate_limit_log where endpoint_key = $1", key) == 4


async def test_anon_sees_nothing_and_nobody_writes_buckets_or_log_directly(tx):
    key = await endpoint(tx, rpm=1, burst=5)
    await check(tx, key, 1, uuid.uuid4())
    for table in ("rate_limit_buckets", "rate_limit_log"):
        for role, admin, sql in [
            ("anon", False, f"select * from public.{table}"),
            ("authenticated", True, f"delete from public.{table}"),
            ("authenticated", True, f"update public.{table} set tokens_remaining = 1000"),
            ("authenticated", False, f"insert into public.{table} (endpoint_key) values ('{key}')"),
        ]:
            async with acting_as(tx, role, uuid.uuid4() if role == "authenticated" else None, admin=admin):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await tx.execute(sql)
