"""Events applied/s by the real consume job in an arq worker, beside arq no-op jobs/s, same settings.

    python bench/worker.py [--events 5000] [--rounds 3] [--kind payment_intent.succeeded|checkout.session.completed|mix]

What runs:
  * a scratch database (migrated with aipt.migrate, demo catalogue seeded, dropped at the end) and an
    empty Redis db (claimed like the test suite claims one, flushed at the end);
  * the worker as `aipt worker` builds it: worker.main.spec(settings), run by aipt.queue.runner with settings.toml's [queue]
    (max_jobs, poll_delay, ...) and [db] pool, the sweeper cron included, logging configured as the
    worker does (JSON, into a file here), in burst mode (it stops when the queue is empty);
  * consume rounds: N distinct events stored as ingest stores them (status pending) and enqueued with
    aipt.queue.enqueue_event, then applied by the real consume job (wrapped only to time each call);
  * no-op rounds: N jobs enqueued the same way, the job function replaced by one that returns at once;
  * reference no-op rounds: the same on the same worker with arq's own job claim (WATCH, EXISTS,
    ZSCORE, MULTI/EXEC) instead of aipt/queue/runner.py's one script, to show what the claim is worth.
Rounds alternate reference no-op, no-op and consume; after each consume round every event must be
'ok'. The rate is N over the span from the first job's start to the last job's end (worker start-up
excluded), the median over rounds; the ratio is the median of each round's consume / no-op (the two ran
back to back); the per-event time is measured around each consume job call (pool acquire, the SQL, the
log line), pooled over rounds.

The cpu columns are the cores kept busy during the round (1.00 = one core all the time); 'others' is the
rest of the machine (another user of the box shows there: the run prints a warning, run it again).
--max-jobs / --poll-delay try other [queue] settings (for both kinds of round); --extra-sql applies SQL
(e.g. a candidate fix) to the scratch database after the migrations.

--catalog adds that many neurons (a realistic catalogue), and the events then buy them all in turn
instead of the demo neuron alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import uvloop
from arq.worker import Worker as ArqWorker

from aipt import db, logs, queue
from aipt.queue import runner
from bench import common
from worker.consume import consume_event
from worker.main import spec


class Timings:
    """Start and end of every job of a round, and each job's own duration."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.durations: list[float] = []
        self.outcomes: dict[str, int] = {}

    def wrap(self, fn):
        @functools.wraps(fn)
        async def timed(ctx: dict, event_id: str, attempt: int | None = None):
            t = time.perf_counter()
            self.starts.append(t)
            outcome = await fn(ctx, event_id, attempt)
            end = time.perf_counter()
            self.ends.append(end)
            self.durations.append(end - t)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            return outcome

        return timed

    def rate(self) -> float:
        return len(self.ends) / (max(self.ends) - min(self.starts)) if self.ends else 0.0


async def noop(ctx: dict, event_id: str, attempt: int | None = None) -> str:
    return "ok"


async def enqueue_all(redis, event_ids: list[str], concurrency: int = 32) -> None:
    it = iter(event_ids)

    async def one() -> None:
        for event_id in it:
            if not await queue.enqueue_event(redis, event_id):
                raise RuntimeError(f"{event_id} was not enqueued")

    await asyncio.gather(*(one() for _ in range(concurrency)))


def start_py_spy(out: str | None) -> subprocess.Popen | None:
    """py-spy on this process (the worker runs in it); None without --py-spy."""
    spy = common.start_py_spy(out, os.getpid())
    if spy is not None:
        time.sleep(0.5)  # attached before the round starts
    return spy


async def run_worker(
    settings, fn, timings: Timings, expected: int, max_seconds: float, profile: str | None = None, stock: bool = False
) -> dict:
    """A burst worker of the real build with the job function `fn`; bounded by max_seconds.

    stock: the same worker with arq's own job claim (four round trips) instead of aipt/queue/runner.py's."""
    jobs = {queue.CONSUME: timings.wrap(fn)}
    w = runner.build(settings, dataclasses.replace(spec(settings), jobs=jobs), burst=True, handle_signals=False)
    if stock:
        w.__class__ = ArqWorker
    spy = start_py_spy(profile)
    meter = common.CpuMeter({"worker": os.getpid()}, common.database_of(settings.database_url))
    meter.start()
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(w.main(), max_seconds)
    except TimeoutError:
        print(f"   round stopped at the --max-seconds bound ({max_seconds} s)")
    finally:
        wall = time.perf_counter() - t0
        cpu = meter.stop()  # before close: the pool's backends still exist
        common.stop_py_spy(spy)
        await w.close()
    done = len(timings.ends)
    if done != expected:
        print(f"   only {done} of {expected} jobs ran")
    return dict(
        rate=timings.rate(), wall=wall, done=done, cpu=cpu, durations=timings.durations, outcomes=timings.outcomes
    )


def fmt(name: str, r: dict, prefix: str = "") -> str:
    d = r["durations"]
    per = 1e6 * r["cpu"]["worker"] / r["rate"] if r["rate"] else float("nan")
    return (
        f"{prefix:<4}{name:<36} {r['rate']:>6.0f}/s  job p50 {1000 * common.pct(d, 50):>6.2f} ms  "
        f"p99 {1000 * common.pct(d, 99):>6.2f} ms  worker cpu/job {per:>4.0f} us  "
        f"{common.cpu_line(r['cpu'], ['worker', 'postgres'])}"
    )


async def seed_catalog(url: str, n: int) -> list[str] | None:
    """n more neurons; the events then buy all of them in turn (else the demo neuron only)."""
    if n <= 0:
        return None
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "insert into public.neurons (id, slug, title, summary, published, required_tier) "
            "select gen_random_uuid(), 'bench-neuron-' || i, 'Bench neuron ' || i, repeat('A summary. ', 20), true, 1 "
            "from generate_series(1, $1) i",
            n,
        )
        await conn.execute("analyze public.neurons")
        ids = [r[0] for r in await conn.fetch("select id::text from public.neurons where slug like 'bench-neuron-%'")]
    finally:
        await conn.close()
    random.Random(7).shuffle(ids)
    return ids


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="events (and no-op jobs) per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument(
        "--kind",
        default="payment_intent.succeeded",
        choices=["payment_intent.succeeded", "checkout.session.completed", "mix"],
        help="events to apply (default payment_intent.succeeded; mix alternates the two)",
    )
    parser.add_argument(
        "--catalog", type=int, default=0, help="extra neurons in the catalogue (default 0: the demo one)"
    )
    parser.add_argument("--max-seconds", type=float, default=60, help="bound on one round (default 60)")
    parser.add_argument(
        "--max-jobs", type=int, help="override [queue] max_jobs for both kinds of round (to try a setting)"
    )
    parser.add_argument(
        "--poll-delay", type=float, help="override [queue] poll_delay_seconds for both (to try a setting)"
    )
    parser.add_argument(
        "--py-spy", metavar="PREFIX", help="record each round with py-spy into PREFIX<kind>-r<round>.txt"
    )
    common.add_scratch_arguments(parser)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="aipt-bench-worker-") as tmp,
        common.claimed_redis_db(args.redis_db) as redis_url,
    ):
        async with common.scratch_database("aipt_bench_worker", extra_sql=args.extra_sql) as url:
            neurons = await seed_catalog(url, args.catalog)
            overrides = {
                k: v for k, v in (("max_jobs", args.max_jobs), ("poll_delay_seconds", args.poll_delay)) if v is not None
            }
            settings = common.bench_settings(url, redis_url, f"aipt:bench:{os.getpid()}", log_format="json")
            settings = settings.model_copy(update=dict(queue=settings.queue.model_copy(update=overrides)))
            q = settings.queue
            print(
                f"worker benchmark: {args.rounds} rounds x {args.events} jobs, {args.kind}, "
                f"max_jobs {q.max_jobs}, poll_delay {q.poll_delay_seconds} s, pool {settings.db.pool_max_size}, "
                f"catalogue {1 + args.catalog} neuron(s), {os.cpu_count()} cores"
            )
            # Log as `aipt worker` does (JSON lines on stderr), but into a file.
            log_path = Path(tmp) / "worker.log"
            log_file = log_path.open("w")
            # Our lines go to whatever sys.stderr is when written: keep it on the file for the whole run.
            real_stderr, sys.stderr = sys.stderr, log_file
            logs.configure(settings.log_format, settings.log_level)
            redis = queue.connect(settings)
            store = await asyncpg.create_pool(url, min_size=4, max_size=4)
            stock_noop = "arq no-op job, arq's own claim"
            results: dict[str, list[dict]] = {stock_noop: [], "arq no-op job": [], f"consume ({args.kind})": []}
            try:
                for rnd in range(1, args.rounds + 1):
                    # Reference: what stock arq does with the same no-op jobs.
                    ids = [f"evt_stock_r{rnd}_{i:07d}" for i in range(args.events)]
                    await enqueue_all(redis, ids)
                    r = await run_worker(settings, noop, Timings(), args.events, args.max_seconds, stock=True)
                    results[stock_noop].append(r)
                    print(fmt(stock_noop, r, f"r{rnd}"))

                    # No-op jobs, enqueued exactly as events are.
                    ids = [f"evt_noop_r{rnd}_{i:07d}" for i in range(args.events)]
                    await enqueue_all(redis, ids)
                    r = await run_worker(
                        settings,
                        noop,
                        Timings(),
                        args.events,
                        args.max_seconds,
                        args.py_spy and f"{args.py_spy}noop-r{rnd}.txt",
                    )
                    results["arq no-op job"].append(r)
                    print(fmt("arq no-op job", r, f"r{rnd}"))

                    # Real events: stored as ingest stores them, then enqueued.
                    events = common.make_events(args.kind, f"w{rnd}_", 0, args.events, neurons)
                    rows = [common.row_args(e, common.dumps(e)) for e in events]
                    async with store.acquire() as conn:
                        await conn.executemany(db.queries["insert_event"], rows)
                        await conn.execute("vacuum analyze public.stripe_events")
                    await enqueue_all(redis, [e["id"] for e in events])
                    r = await run_worker(
                        settings,
                        consume_event,
                        Timings(),
                        args.events,
                        args.max_seconds,
                        args.py_spy and f"{args.py_spy}consume-r{rnd}.txt",
                    )
                    results[f"consume ({args.kind})"].append(r)
                    print(fmt(f"consume ({args.kind})", r, f"r{rnd}"))
                    async with store.acquire() as conn:
                        status = dict(
                            await conn.fetch(
                                "select status, count(*) from public.stripe_events where id like $1 group by status",
                                f"evt_bench_w{rnd}_%",
                            )
                        )
                    if status != {"ok": args.events} or r["outcomes"] != {"ok": args.events}:
                        print(f"   statuses after the round: {status}; job outcomes: {r['outcomes']}")
                async with store.acquire() as conn:
                    purchases = await conn.fetchval("select count(*) from public.user_purchases")
            finally:
                await store.close()
                await queue.close(redis)
                sys.stderr = real_stderr
                log_file.close()
            log_lines = sum(1 for _ in log_path.open("rb"))

    print(f"-- summary: median rate of {args.rounds} rounds, job times pooled")
    summary = {}
    for name, rs in results.items():
        s = dict(
            rate=common.median([r["rate"] for r in rs]),
            durations=[x for r in rs for x in r["durations"]],
            cpu={k: common.median([r["cpu"][k] for r in rs]) for k in rs[0]["cpu"]},
        )
        summary[name] = s
        print(fmt(name, s, ""))
    noop_rate, consume = summary["arq no-op job"]["rate"], summary[f"consume ({args.kind})"]

    def paired(over: str) -> tuple[float, list[float]]:
        """consume / `over`, round by round (each pair ran back to back), and their median: the host's
        speed drifts by tens of percent within a minute, a pair's two rounds see the same drift."""
        rs = [c["rate"] / o["rate"] for c, o in zip(results[f"consume ({args.kind})"], results[over], strict=True)]
        return common.median(rs), rs

    ratio, per_round = paired("arq no-op job")
    stock_ratio, _ = paired(stock_noop)
    p50 = 1000 * common.pct(consume["durations"], 50)
    print(
        f"  ratio consume / no-op: {100 * ratio:.0f}%, median of the rounds' "
        f"{', '.join(f'{100 * x:.0f}' for x in per_round)}%  (target >= 50%)"
    )
    print(
        f"  consume / no-op with arq's own claim: {100 * stock_ratio:.0f}%  "
        f"(the claim in one script: no-op x{noop_rate / summary[stock_noop]['rate']:.2f})"
    )
    print(f"  consume job p50 {p50:.2f} ms (target < 5 ms), p99 {1000 * common.pct(consume['durations'], 99):.2f} ms")
    print(f"  purchases made: {purchases}; worker log lines: {log_lines}")
    busy = max(r["cpu"]["others"] for rs in results.values() for r in rs)
    if busy > 0.25:
        print(f"  WARNING: other work used up to {busy:.2f} cores during a round (noisy neighbour): run again")
    print(
        f"RESULT consume {consume['rate']:.0f}/s, no-op {noop_rate:.0f}/s, ratio {100 * ratio:.0f}%, "
        f"job p50 {p50:.2f} ms, p99 {1000 * common.pct(consume['durations'], 99):.2f} ms"
        + ("  [noisy machine]" if busy > 0.25 else "")
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())
