"""How much does a rate-limit check cost? Compared with `select 1` through the same pool, same run.

    python bench/ratelimit.py [--calls 4000] [--users 1000] [--rounds 3]

Creates a scratch database (from BENCH_ADMIN_URL, else TEST_DATABASE_URL, else the local postgres),
applies the migrations with aipt.migrate, and drops it at the end. Logging is on (log_mode 'all').
The p50 ratios are also printed round by round (each round runs every kind back to back), since the
host's speed can drift between rounds.

For 1 and 32 concurrent clients it prints calls/s and p50/p99 latency of `select 1`, of
`f_check_rate_limit(...)` and of two floors: the check's own writes (update the bucket row, append a
log row) as one plain SQL statement, and an empty function of the shape the contract asks for
(plpgsql, SECURITY DEFINER, search_path = '', RETURNS TABLE). Then the ratios check / select 1 (the
target: <= 2 at p50), writes / select 1 and check / writes. Then the server time of one check: a plpgsql loop
timed with clock_timestamp(), each call in its own transaction (commit included, no round trip).
The caller is a superuser passing p_user_id, spread over --users buckets (the realistic case: each
signed-in user has their own bucket; one hot bucket would measure its row lock instead).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

CONCURRENCY = (1, 32)
ENDPOINT = "bench"
CHECK = "select allowed from public.f_check_rate_limit(p_endpoint_key => $1, p_user_id => $2)"
# Two floors, so the ratio can be read: what the check cannot avoid costing.
# 1. The same writes as one check (refill-free: update the caller's bucket row, append a log row), as
#    one plain SQL statement: the cost of a write transaction on the two unlogged tables.
WRITES = """
with b as (
  update public.rate_limit_buckets set last_request = now(), request_count = request_count + 1
   where endpoint_key = $1 and bucket_key = 'user:' || $2::uuid::text
  returning user_id, tokens_remaining)
insert into public.rate_limit_log (request_timestamp, endpoint_key, user_id, was_allowed, tokens_consumed, tokens_remaining)
select now(), $1, user_id, true, 1, tokens_remaining from b"""
# 2. The function shape the contract asks for (plpgsql, SECURITY DEFINER, search_path = '', RETURNS
#    TABLE for supabase-js), doing nothing: created in the scratch database only.
SHAPE_FN = """
create function public.bench_empty_check(p_endpoint_key text, p_tokens_required integer default 1, p_user_id uuid default null)
returns table (allowed boolean, tokens_remaining integer, reset_time timestamptz, reason text)
language plpgsql volatile security definer set search_path = ''
as $$ begin allowed := true; return next; end $$"""
SHAPE = "select allowed from public.bench_empty_check(p_endpoint_key => $1, p_user_id => $2)"
# Server time: the same calls in a server-side loop, each in its own transaction (commit included),
# without the client, the network and the protocol.
SERVER_LOOP = """
do $$
declare
  v_users uuid[] := $USERS$;
  v_n integer := %(n)s;
  v_t0 timestamptz;
  v_allowed boolean;
begin
  v_t0 := clock_timestamp();
  for i in 1..v_n loop
    select r.allowed into v_allowed
    from public.f_check_rate_limit('%(endpoint)s', 1, v_users[1 + i %% array_length(v_users, 1)]) r;
    commit;
  end loop;
  perform set_config('bench.per_call_us', (extract(epoch from clock_timestamp() - v_t0) * 1e6 / v_n)::text, false);
end
$$;
"""


async def clients(pool: asyncpg.Pool, n_clients: int, calls: int, one_call) -> tuple[float, list[float]]:
    """n_clients loops sharing `calls` calls; returns (calls per second, latencies in ms)."""
    latencies: list[float] = []
    per_client = calls // n_clients

    async def client(c: int) -> None:
        async with pool.acquire() as conn:
            for i in range(per_client):
                t = time.perf_counter()
                await one_call(conn, c * per_client + i)
                latencies.append((time.perf_counter() - t) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(n_clients)))
    return len(latencies) / (time.perf_counter() - start), latencies


async def bench(url: str, calls: int, rounds: int, users: list[uuid.UUID]) -> None:
    async def select_one(conn: asyncpg.Connection, i: int) -> None:
        await conn.fetchval("select 1")

    async def check(conn: asyncpg.Connection, i: int) -> None:
        await conn.fetchval(CHECK, ENDPOINT, users[i % len(users)])

    async def writes(conn: asyncpg.Connection, i: int) -> None:
        await conn.execute(WRITES, ENDPOINT, users[i % len(users)])

    async def shape(conn: asyncpg.Connection, i: int) -> None:
        await conn.fetchval(SHAPE, ENDPOINT, users[i % len(users)])

    # The check comes before the writes: its warm-up creates the bucket rows they update.
    kinds = {
        "select 1": select_one,
        "f_check_rate_limit": check,
        "floor: its writes, SQL": writes,
        "floor: empty function": shape,
    }
    pool = await asyncpg.create_pool(url, min_size=max(CONCURRENCY), max_size=max(CONCURRENCY))
    try:
        # Warm up: every bucket exists, every connection has its statements prepared.
        for fn in kinds.values():
            await clients(pool, max(CONCURRENCY), max(len(users), calls // 4), fn)

        print(f"{'clients':>7}  {'query':<22} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for n in CONCURRENCY:
            # Rounds alternate the kinds, so a noisy moment on the machine hits them all alike.
            rates: dict[str, list[float]] = {k: [] for k in kinds}
            lats: dict[str, list[float]] = {k: [] for k in kinds}
            round_p50s: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(rounds):
                for name, fn in kinds.items():
                    rate, lat = await clients(pool, n, calls, fn)
                    rates[name].append(rate)
                    lats[name].extend(lat)
                    round_p50s[name].append(statistics.median(lat))
            res = {k: (statistics.median(rates[k]), statistics.median(lats[k]), common.pct(lats[k], 99)) for k in kinds}
            for name, (rate, p50, p99) in res.items():
                print(f"{n:>7}  {name:<22} {rate:>9.0f} {p50:>8.3f} {p99:>8.3f}")
            base, chk, floor = res["select 1"], res["f_check_rate_limit"], res["floor: its writes, SQL"]
            print(
                f"{n:>7}  {'check / select 1':<22} {chk[0] / base[0]:>9.2f} {chk[1] / base[1]:>8.2f} {chk[2] / base[2]:>8.2f}"
            )
            print(
                f"{n:>7}  {'writes / select 1':<22} {floor[0] / base[0]:>9.2f} {floor[1] / base[1]:>8.2f} {floor[2] / base[2]:>8.2f}"
            )
            print(
                f"{n:>7}  {'check / writes':<22} {chk[0] / floor[0]:>9.2f} {chk[1] / floor[1]:>8.2f} {chk[2] / floor[2]:>8.2f}"
            )
            # Round by round (a round's kinds ran back to back, at the same host speed):
            for name, over in (
                ("check / select 1", "f_check_rate_limit"),
                ("writes / select 1", "floor: its writes, SQL"),
            ):
                per = [a / b for a, b in zip(round_p50s[over], round_p50s["select 1"], strict=True)]
                print(
                    f"{n:>7}  {name} at p50, round by round: {', '.join(f'{x:.2f}' for x in per)} "
                    f"(median {statistics.median(per):.2f})"
                )

        async with pool.acquire() as conn:
            array = "array[" + ",".join(f"'{u}'" for u in users) + "]::uuid[]"
            await conn.execute(SERVER_LOOP.replace("$USERS$", array) % {"n": calls, "endpoint": ENDPOINT})
            per_call = float(await conn.fetchval("select current_setting('bench.per_call_us')"))
            logged = await conn.fetchval("select count(*) from public.rate_limit_log")
        print(f"server time per check, commit included (plpgsql loop of {calls}): {per_call:.1f} us")
        print(f"log rows written during the run: {logged}")
    finally:
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls per measurement (default 4000)")
    parser.add_argument("--users", type=int, default=1000, help="distinct buckets (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency (default 3)")
    args = parser.parse_args()

    async with common.scratch_database("aipt_bench_ratelimit", seed_demo=False) as url:
        conn = await asyncpg.connect(url)
        try:
            # Big enough that every call is allowed: the bench measures the full path (refill,
            # spend, log), not the refusal. log_mode 'all': every call writes a log row.
            await conn.execute(
                "insert into public.rate_limit_config (endpoint_key, requests_per_minute, burst_size, log_mode)"
                " values ($1, 1000000, 1000000, 'all')",
                ENDPOINT,
            )
            await conn.execute(SHAPE_FN)
            settings = await conn.fetch(
                "select name, setting from pg_settings where name in ('synchronous_commit', 'fsync') order by name"
            )
            version = await conn.fetchval("show server_version")
        finally:
            await conn.close()
        print(f"PostgreSQL {version}; " + ", ".join(f"{r['name']}={r['setting']}" for r in settings))
        print(
            f"calls per measurement: {args.calls} x {args.rounds} rounds; buckets: {args.users}; logging: all requests"
        )
        await bench(url, args.calls, args.rounds, [uuid.uuid4() for _ in range(args.users)])


if __name__ == "__main__":
    asyncio.run(main())
