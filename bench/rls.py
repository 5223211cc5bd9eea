"""What row-level security costs a signed-in user: count(*) over the Stripe events, beside the owner's.

    python bench/rls.py [--rows 200000] [--rounds 5]

A scratch database (every migration, dropped at the end) gets --rows events. Each round times, in the
same session and back to back:
  * owner: `select count(*) from public.stripe_events` as the owner (no row-level security): the floor;
  * user:  the same statement as a signed-in non-admin (set role authenticated + JWT claims, as
           PostgREST does), which the stripe_events_admin_read policy filters (to nothing);
  * admin: the same as an admin JWT, which the policy lets read every row.
The policies call is_admin() once per statement (an InitPlan: `(select public.is_admin())`), not once
per row; per row, a non-admin's count over 200k rows took 11.4 s against 42 ms for the owner. It prints
each round and the median ratio to the owner's time (target: user ≤ 3x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import asyncpg
from common import median, scratch_database

COUNT = "select count(*) from public.stripe_events"

SEED = """
insert into public.stripe_events (id, type, created, payload, status, received_at, processed_at)
select 'evt_rls_' || g, 'invoice.payment_succeeded', 1700000000 + g,
       jsonb_build_object('id', 'evt_rls_' || g, 'object', 'event', 'type', 'invoice.payment_succeeded',
                          'data', jsonb_build_object('object', jsonb_build_object('id', 'in_' || g))),
       'ok', now(), now()
from generate_series(1, $1) g
"""


async def timed(conn: asyncpg.Connection, role: str | None, claims: dict | None) -> tuple[float, int]:
    async with conn.transaction():
        if role:
            await conn.execute("select set_config('request.jwt.claims', $1, true)", json.dumps(claims))
            await conn.execute(f"set local role {role}")
        started = time.perf_counter()
        n = await conn.fetchval(COUNT)
        return time.perf_counter() - started, n


async def main(rows: int, rounds: int) -> None:
    async with scratch_database("aipt_bench_rls", seed_demo=False) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(SEED, rows)
            await conn.execute("vacuum analyze public.stripe_events")
            who = {
                "owner": (None, None),
                "user": ("authenticated", {"role": "authenticated", "sub": str(uuid.uuid4())}),
                "admin": (
                    "authenticated",
                    {"role": "authenticated", "sub": str(uuid.uuid4()), "app_metadata": {"role": "admin"}},
                ),
            }
            for role, claims in who.values():  # warm the cache and the plans
                await timed(conn, role, claims)
            ratios: dict[str, list[float]] = {"user": [], "admin": []}
            print(f"count(*) over {rows:,} stripe_events, {rounds} rounds (ms)")
            for r in range(1, rounds + 1):
                got = {name: await timed(conn, role, claims) for name, (role, claims) in who.items()}
                assert got["owner"][1] == got["admin"][1] == rows and got["user"][1] == 0, got
                for name in ratios:
                    ratios[name].append(got[name][0] / got["owner"][0])
                print(
                    f"  round {r}: "
                    + "  ".join(f"{n} {got[n][0] * 1000:8.2f}" for n in who)
                    + f"   user/owner {ratios['user'][-1]:.2f}x  admin/owner {ratios['admin'][-1]:.2f}x"
                )
            print(
                f"median: user/owner {median(ratios['user']):.2f}x (target <= 3x), "
                f"admin/owner {median(ratios['admin']):.2f}x"
            )
        finally:
            await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.rounds))
