"""Latency of the delete guard, soft delete and restore at catalogue scale, beside a primary-key SELECT.

    python -m bench.guards [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Creates a scratch database, migrates it with aipt.migrate, seeds 100k neurons, 10k bundles and 1M
bundle links (plus subscriptions and purchases for the guards to count), measures each call through
asyncpg as an admin JWT would make it through PostgREST (role authenticated, request.jwt.claims; each
call its own autocommitted transaction), prints p50/p99 and the ratio to a primary-key SELECT on
neurons measured in the same run, and drops the database. Not part of the test suite.

What is measured:
  pk_select    select * from public.neurons where id = $1            (random neurons)
  guard        select * from public.f_can_delete_neuron($1)          (random neurons in ~9 live bundles,
                                                                       reached by thousands of subscriptions)
  soft_delete  select public.f_soft_delete_neuron($1, 'bench')       (neurons that only deleted bundles hold)
  restore      select public.f_restore_neuron($1)                    (the same neurons, brought back)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from aipt import migrate

TARGET_P50_MS = 2.0

SEED = """
set session_replication_role = replica;  -- seeding only: skip triggers and foreign-key checks

create temp table neuron_ids as
  select i as idx, gen_random_uuid() as id from generate_series(0, {neurons} - 1) i;
create temp table bundle_ids as
  select i as idx, gen_random_uuid() as id from generate_series(0, {bundles} - 1) i;
create index on neuron_ids (idx);

-- Neurons {live_neurons}.. are held only by deleted bundles: the guard lets them go (soft delete, restore).
insert into public.neurons (id, slug, title, summary, published, required_tier)
select id, 'neuron-' || idx, 'Neuron ' || idx, 'A prompt template', true,
       case when idx >= {live_neurons} then 9 else idx % 4 end
from neuron_ids;

-- Bundles {live_bundles}.. are soft-deleted, with their links.
insert into public.bundles (id, slug, title, required_tier, deleted_at, deletion_reason)
select id, 'bundle-' || idx, 'Bundle ' || idx, idx % 4,
       case when idx >= {live_bundles} then now() - interval '1 day' end,
       case when idx >= {live_bundles} then 'bench' end
from bundle_ids;

insert into public.bundle_neurons (bundle_id, neuron_id, deleted_at)
select b.id, n.id, case when b.idx >= {live_bundles} then now() - interval '1 day' end
from bundle_ids b
cross join generate_series(0, {links_per_bundle} - 1) j
join neuron_ids n on n.idx = (b.idx * 37 + j * 1009)
                             % case when b.idx < {live_bundles} then {live_neurons} else {neurons} end
on conflict do nothing;

insert into public.user_subscriptions
  (stripe_subscription_id, user_id, plan_tier, status, expires_at, last_event_created)
select 'sub_' || i, gen_random_uuid(), 1 + i % 3,
       case when i % 5 < 3 then 'active' when i % 5 = 3 then 'trialing' else 'canceled' end,
       now() + interval '20 days', 0
from generate_series(1, {subscriptions}) i;

insert into public.user_purchases (user_id, neuron_id, payment_intent_id, amount, currency)
select gen_random_uuid(), id, 'pi_n_' || idx, 900, 'eur' from neuron_ids where idx < {live_neurons} and idx % 10 = 0;
insert into public.user_purchases (user_id, bundle_id, payment_intent_id, amount, currency)
select gen_random_uuid(), id, 'pi_b_' || idx, 2900, 'eur' from bundle_ids where idx < {live_bundles};

set session_replication_role = origin;
"""


def database_url(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(conn: asyncpg.Connection, sql: str, ids: list[uuid.UUID], *, expect=None) -> list[float]:
    """Milliseconds per call, one call per id."""
    samples = []
    for content_id in ids:
        start = time.perf_counter_ns()
        result = await conn.fetchval(sql, content_id)
        samples.append((time.perf_counter_ns() - start) / 1e6)
        if expect is not None and result != expect:
            raise SystemExit(f"{sql} returned {result!r} for {content_id}, expected {expect!r}")
    return samples


async def seed(conn: asyncpg.Connection, args: argparse.Namespace) -> tuple[dict[str, int], list, list]:
    """Seed the catalogue; return the row counts, the ids of guarded neurons and of deletable ones."""
    live_neurons = args.neurons - args.deletable
    live_bundles = args.bundles - args.bundles // 10
    await conn.execute(
        SEED.format(
            neurons=args.neurons,
            bundles=args.bundles,
            live_neurons=live_neurons,
            live_bundles=live_bundles,
            links_per_bundle=args.links // args.bundles,
            subscriptions=args.subscriptions,
        )
    )
    await conn.execute("vacuum analyze")
    counts = {}
    for table in ("neurons", "bundles", "bundle_neurons", "user_subscriptions", "user_purchases"):
        counts[table] = await conn.fetchval(f"select count(*) from public.{table}")
    guarded = [r["id"] for r in await conn.fetch("select id from neuron_ids where idx < $1", live_neurons)]
    deletable = [r["id"] for r in await conn.fetch("select id from neuron_ids where idx >= $1", live_neurons)]
    return counts, guarded, deletable


async def measure(url: str, args: argparse.Namespace, guarded: list, deletable: list) -> dict[str, list[float]]:
    rng = random.Random(23)
    guarded = rng.sample(guarded, args.samples)
    deletable = rng.sample(deletable, min(args.samples, len(deletable)))
    conn = await asyncpg.connect(url)
    try:
        # As PostgREST runs an admin's RPC: role authenticated, the JWT's claims in request.jwt.claims.
        admin = await conn.fetchval(
            "insert into auth.users (id, email) values (gen_random_uuid(), 'bench-admin@example.test') returning id"
        )
        claims = {"role": "authenticated", "sub": str(admin), "app_metadata": {"role": "admin"}}
        await conn.execute("select set_config('request.jwt.claims', $1, false)", json.dumps(claims))
        await conn.execute("set role authenticated")

        warm = guarded[: args.samples // 2]
        await timed(conn, "select id from public.neurons where id = $1", warm)
        await timed(conn, "select can_delete from public.f_can_delete_neuron($1)", warm)

        results = {}
        results["pk_select"] = await timed(conn, "select id from public.neurons where id = $1", guarded)
        results["guard"] = await timed(
            conn, "select can_delete from public.f_can_delete_neuron($1)", guarded, expect=False
        )
        results["soft_delete"] = await timed(
            conn, "select public.f_soft_delete_neuron($1, 'bench')", deletable, expect=True
        )
        results["restore"] = await timed(conn, "select public.f_restore_neuron($1)", deletable, expect=True)
        # The primary-key SELECT once more, after the writes: the floor must not have moved.
        results["pk_select_after"] = await timed(conn, "select id from public.neurons where id = $1", guarded)
        return results
    finally:
        await conn.close()


def report(results: dict[str, list[float]], counts: dict[str, int], server: dict[str, str]) -> bool:
    floor = statistics.median(results["pk_select"] + results["pk_select_after"])
    settings = ", ".join(f"{k}={server[k]}" for k in ("fsync", "synchronous_commit"))
    print(f"PostgreSQL {server['server_version']}, {settings}")
    print("seeded: " + ", ".join(f"{n:,} {t}" for t, n in counts.items()))
    print(f"{'call':<16}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'p50 / pk':>10}")
    ok = True
    for name, samples in results.items():
        p50, p99 = percentile(samples, 0.50), percentile(samples, 0.99)
        print(f"{name:<16}{len(samples):>6}{p50:>10.3f}{p99:>10.3f}{p50 / floor:>10.1f}")
        if name in ("guard", "soft_delete", "restore") and p50 >= TARGET_P50_MS:
            ok = False
    print(f"target: guard, soft_delete and restore each under {TARGET_P50_MS} ms p50: {'met' if ok else 'NOT met'}")
    return ok


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--admin-url", default=os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--neurons", type=int, default=100_000)
    parser.add_argument("--bundles", type=int, default=10_000)
    parser.add_argument("--links", type=int, default=1_000_000)
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--deletable", type=int, default=2_000, help="neurons only deleted bundles hold")
    parser.add_argument("--samples", type=int, default=2_000, help="calls measured per kind")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (to EXPLAIN in it)")
    args = parser.parse_args()

    name = f"aipt_bench_{os.getpid()}"
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f'drop database if exists "{name}" with (force)')
    await admin.execute(f'create database "{name}"')
    url = database_url(args.admin_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            started = time.perf_counter()
            await migrate.migrate(conn)
            counts, guarded, deletable = await seed(conn, args)
            server = {k: await conn.fetchval(f"show {k}") for k in ("server_version", "fsync", "synchronous_commit")}
            print(f"migrated ({migrate.schema_dir()}) and seeded {name} in {time.perf_counter() - started:.0f} s")
        finally:
            await conn.close()
        results = await measure(url, args, guarded, deletable)
        return 0 if report(results, counts, server) else 1
    finally:
        if args.keep:
            print(f"kept {url}")
        else:
            await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
