"""Does the retention cleanup hurt ingest? Ingest p99 while 1,000,000 expired events are deleted,
beside ingest p99 with nothing else running, in the same run.

    python bench/cleanup.py [--expired 1000000] [--clients 2] [--segment 4] [--max-seconds 300]
                            [--batch-size N] [--pause S]

Creates a scratch database (from BENCH_ADMIN_URL, else TEST_DATABASE_URL, else the local postgres),
applies the migrations with aipt.migrate and inserts --expired finished events received 100-200 days
ago (1% with a resolved failure row), each with a real-sized payload, in one insert ... select
generate_series. Then it starts the real web process (`aipt web`: uvicorn, uvloop, httptools) on a
loopback port and posts signed, real-shaped events (stripe.WebhookSignature.generate_signature_header)
from --clients concurrent httpx clients, without pause:

  1. warm-up (500 requests, not measured);
  2. then, alternately, a quiet segment (--segment seconds of load, nothing else running) and a
     cleanup segment (the same load while a cleanup process runs the worker's own code,
     aipt.retention.run(..., "stripe_events", max_seconds=--segment), one recorded run per segment),
     until everything expired is deleted.

Alternating makes the comparison fair on a shared machine: whatever else slows it down lands on
both sides alike. Ingest spends the stripe_webhook rate-limit bucket as in production; the bench
raises that bucket so nothing is refused. Prints p50/p99 of all quiet and all cleanup segments,
the ratio p99 cleanup / p99 quiet (target: at most 2) and the rows/s deleted. Bounded in time
(--max-seconds of cleanup in all). Drops the database, stops its processes and deletes its Redis
keys at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as redis_client
import stripe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aipt import fixtures  # noqa: E402
from bench import common  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "whsec_bench_cleanup"
EVENT_PREFIX = f"evt_cleanupbench{os.getpid()}_"  # this run's events (and their Redis job keys)

# Expired events: finished (ok) 100-200 days ago, with a payload about the size of a real one.
EXPIRED = """
insert into public.stripe_events (id, type, created, payload, status, received_at, processed_at)
select 'evt_expired_' || g, 'invoice.payment_succeeded', 1700000000 + g,
       jsonb_build_object('id', 'evt_expired_' || g, 'object', 'event', 'type', 'invoice.payment_succeeded',
                          'data', jsonb_build_object('object', jsonb_build_object(
                            'id', 'in_' || g, 'object', 'invoice', 'amount_due', 1900, 'currency', 'eur',
                            'lines', $1::jsonb))),
       'ok', now() - interval '200 days' + (g::float8 / $2) * interval '100 days',
       now() - interval '200 days' + (g::float8 / $2) * interval '100 days'
from generate_series(1, $2) g
"""
FAILURES = """
insert into public.webhook_failures (event_id, event_type, failure_count, max_retries, resolved_at, first_failure)
select 'evt_expired_' || g, 'invoice.payment_succeeded', 1, 3, now() - interval '150 days', now() - interval '150 days'
from generate_series(1, $1, 100) g
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """--clients loops posting signed events; each latency lands in the phase it started in."""

    def __init__(self, base: str, clients: int):
        self.base, self.clients = base, clients
        self.template = fixtures.load("checkout.session.completed")
        self.phase = "warmup"
        self.latencies: dict[str, list[float]] = {}
        self.failures: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.budget = 0
        self.stop = asyncio.Event()
        self.http = httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=clients))

    def body(self) -> str:
        event = dict(self.template, id=f"{EVENT_PREFIX}{uuid.uuid4().hex[:20]}", created=int(time.time()))
        return json.dumps(event)

    async def run_phase(self, name: str, requests: int | None = None, until=None) -> float:
        """Run `requests` requests, or until the awaitable `until` is done; returns the wall time."""
        self.phase, self.budget = name, requests if requests is not None else 10**9
        self.latencies.setdefault(name, [])
        self.seconds[name] = self.seconds.get(name, 0.0)
        self.stop.clear()
        started = time.perf_counter()
        loops = [asyncio.create_task(self._client(self.http)) for _ in range(self.clients)]
        if until is not None:
            result = await until
            self.stop.set()
        await asyncio.gather(*loops)
        elapsed = time.perf_counter() - started
        self.seconds[name] += elapsed
        return result if until is not None else elapsed

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self.stop.is_set() and self.budget > 0:
            self.budget -= 1
            body = self.body()
            headers = {
                "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(body, SECRET),
                "Content-Type": "application/json",
            }
            phase = self.phase
            t0 = time.perf_counter()
            r = await client.post("/webhooks/stripe", content=body, headers=headers)
            elapsed = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                self.failures[phase] = self.failures.get(phase, 0) + 1
            self.latencies[phase].append(elapsed)


# The cleanup side: a process of its own running the worker's retention runs, one time-limited run per line read.
CLEANER = """
import asyncio, json, sys
from aipt import logs, retention, settings

async def main():
    s = settings.load()
    logs.configure(s.log_format, s.log_level)  # to stderr: stdout carries the outcomes
    for line in sys.stdin:
        outcome = await retention.run(s, "stripe_events", run_by="bench", max_seconds=float(line))
        print(json.dumps(outcome.as_dict()), flush=True)

asyncio.run(main())
"""


class Cleaner:
    def __init__(self, env: dict):
        self.env = env

    async def __aenter__(self):
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLEANER,
            env=self.env,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return self

    async def run(self, seconds: float) -> dict:
        self.proc.stdin.write(f"{seconds}\n".encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise SystemExit("the cleanup process died")
        return json.loads(line)

    async def __aexit__(self, *exc):
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def start_web(env: dict, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "aipt", "web"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the web process did not become ready")
            await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> None:
    queue_name = f"aipt:bench:cleanup:{os.getpid()}"
    server = None
    async with common.scratch_database("aipt_bench_cleanup", seed_demo=False) as url:
        try:
            conn = await asyncpg.connect(url)
            try:
                lines = json.dumps(
                    {
                        "object": "list",
                        "data": [{"id": f"il_{i}", "amount": 1900, "description": "x" * 120} for i in range(6)],
                    }
                )
                t0 = time.perf_counter()
                await conn.execute(EXPIRED, lines, args.expired)
                await conn.execute(FAILURES, args.expired)
                await conn.execute(
                    "update public.rate_limit_config set requests_per_minute = 100000000, burst_size = 100000000"
                    " where endpoint_key = 'stripe_webhook'"
                )
                await conn.execute("vacuum analyze")
                size = await conn.fetchval("select pg_size_pretty(pg_total_relation_size('public.stripe_events'))")
                print(
                    f"inserted {args.expired:,} expired events in {time.perf_counter() - t0:.1f} s (stripe_events: {size})"
                )
            finally:
                await conn.close()

            port = free_port()
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "REDIS_URL": REDIS_URL,
                "STRIPE_WEBHOOK_SECRET": SECRET,
                "PORT": str(port),
                "AIPT_WEB_HOST": "127.0.0.1",
                "AIPT_QUEUE_NAME": queue_name,
                "AIPT_LOG_LEVEL": "warning",
                "LOG_FORMAT": "json",
            }
            if args.batch_size:
                env["AIPT_CLEANUP_BATCH_SIZE"] = str(args.batch_size)
            if args.pause is not None:
                env["AIPT_CLEANUP_PAUSE_SECONDS"] = str(args.pause)
            server = await start_web(env, port)
            load = Load(f"http://127.0.0.1:{port}", args.clients)
            try:
                await load.run_phase("warmup", 500)
                deleted = {"stripe_events": 0, "webhook_failures": 0}
                cleanup_seconds, runs = 0.0, 0
                async with Cleaner(env) as cleaner:
                    while deleted["stripe_events"] < args.expired and cleanup_seconds < args.max_seconds:
                        await load.run_phase("quiet", until=asyncio.sleep(args.segment))
                        outcome = await load.run_phase("cleanup", until=cleaner.run(args.segment))
                        if outcome["status"] != "ok":
                            raise SystemExit(f"cleanup run failed: {outcome}")
                        runs += 1
                        cleanup_seconds += outcome["seconds"]
                        for table, n in outcome["counts"].items():
                            deleted[table] += n
                        if not outcome["note"]:  # it finished before its time limit: nothing left
                            break
            finally:
                await load.http.aclose()

            print(
                f"\ningest: {args.clients} concurrent clients posting signed checkout.session.completed events to "
                f"`aipt web`, alternating {args.segment:g} s segments"
            )
            print(f"{'segments':<10}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  failures")
            for phase in ("quiet", "cleanup"):
                lat = load.latencies[phase]
                print(
                    f"{phase:<10}{len(lat):>10,}{len(lat) / load.seconds[phase]:>9.0f}{statistics.median(lat):>9.2f}"
                    f"{pct(lat, 99):>9.2f}{max(lat):>9.1f}  {load.failures.get(phase, 0)}"
                )
            rate = deleted["stripe_events"] / cleanup_seconds
            print(
                f"\ncleanup: deleted {deleted['stripe_events']:,} events and {deleted['webhook_failures']:,} failure rows "
                f"in {cleanup_seconds:.1f} s over {runs} runs → {rate:,.0f} events/s"
            )
            ratio = pct(load.latencies["cleanup"], 99) / pct(load.latencies["quiet"], 99)
            print(
                f"ingest p99 during cleanup / quiet: {ratio:.2f}x (target ≤ 2x: {'met' if ratio <= 2 else 'NOT met'})"
            )
            if deleted["stripe_events"] != args.expired or any(load.failures.values()):
                raise SystemExit("the cleanup did not delete every expired event, or ingest failed requests")
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=10)
            r = redis_client.Redis.from_url(REDIS_URL)
            try:
                keys = [queue_name, queue_name + ":health-check"]
                async for key in r.scan_iter(match=f"arq:job:stripe:{EVENT_PREFIX}*", count=1000):
                    keys.append(key)
                await r.delete(*keys)
            finally:
                await r.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expired", type=int, default=1_000_000, help="expired events to delete")
    # 2 keeps a small machine (client, web and Postgres on 2 CPUs) below saturation, so p99 measures
    # the service rather than a queue of requests waiting for a CPU.
    parser.add_argument("--clients", type=int, default=2, help="concurrent ingest clients")
    parser.add_argument("--segment", type=float, default=4, help="seconds of each quiet and each cleanup segment")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop after this much cleanup time in all")
    parser.add_argument("--batch-size", type=int, help="override [cleanup] batch_size")
    parser.add_argument("--pause", type=float, help="override [cleanup] pause_seconds")
    asyncio.run(main(parser.parse_args()))
