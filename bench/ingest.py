"""Signed webhooks/s through the real endpoint, beside a bare asyncpg INSERT of the same payloads.

    python bench/ingest.py [--concurrency 32] [--events 5000] [--rounds 3] [--ratelimit off|on|both]

What runs:
  * a scratch database (migrated with aipt.migrate, dropped at the end) and an empty Redis db (claimed
    like the test suite claims one, flushed at the end);
  * the endpoint as `aipt web` serves it: `python -m aipt web` in a subprocess (uvicorn, uvloop +
    httptools, one process, the pool of settings.toml), on 127.0.0.1 and a free port;
  * the load: --client-procs processes of raw asyncio HTTP/1.1 keep-alive clients (uvloop, requests
    signed beforehand), --concurrency connections in all, each with one request in flight;
  * the floor: the same number of asyncpg clients sharing a pool of the server's size, running the
    endpoint's own insert_event statement (aipt/queries.sql) with the same kind of payload.
Events are copies of the checkout.session.completed fixture (~2.7 KB), each with new ids. Rounds
alternate floor and endpoint, so both see the same table size and the same machine; the rate is the
median over rounds, the latencies are pooled; the ratio is the median of each round's endpoint / floor.
Every round is bounded by --events and --max-seconds.

--ratelimit: by default the endpoint spends the shared stripe_webhook bucket, in leases of
[ratelimit] webhook_lease tokens per check (ingest/limit.py). 'off' measures the plain store path;
'on' raises that bucket in the scratch database so that nothing is refused, and adds a reference row
run by bare asyncpg clients: a one-token check, then the INSERT, per event (what a check per webhook
costs in SQL alone). 'both' (the default) runs 'off', then 'on'.

Each row prints the rate, p50/p99 latency as the client sees it, the CPU per request of the main
process (server, or Postgres for the floors) and the cores each party kept busy; 'others' is the rest
of the machine (another user of the box shows there: the run prints a warning, run it again).
BENCH_SERVER_CMD replaces `python -m aipt web` (e.g. a launcher that applies a candidate fix).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import httpx
import uvloop

from aipt import db
from bench import common

KIND = "checkout.session.completed"
PATH = "/webhooks/stripe"
# The endpoint's own statement, and (with --ratelimit on) a check of one token per webhook as a reference:
# what ingest paid before it took the stripe_webhook tokens in leases (ingest/limit.py).
INSERT = db.queries["insert_event"]
CHECK_ONE = "select allowed from public.f_check_rate_limit(p_endpoint_key => 'stripe_webhook')"


# --- the load generator (child processes) ----------------------------------------------------------


class _Client(asyncio.Protocol):
    """One keep-alive connection with one request in flight; takes requests from a shared deque."""

    def __init__(self, shared: dict):
        self.shared = shared
        self.buf = bytearray()
        self.done = asyncio.get_running_loop().create_future()
        self.sent = 0.0

    def connection_made(self, transport):
        self.transport = transport

    def send_next(self) -> None:
        s = self.shared
        if not s["requests"] or time.perf_counter() > s["deadline"]:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.sent = time.perf_counter()
        self.transport.write(s["requests"].popleft())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            now = time.perf_counter()
            status = int(head[9:12])
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            s = self.shared
            s["latencies"].append(now - self.sent)
            if status == 200 and b'"duplicate":false' in body:
                s["accepted"] += 1
            else:
                s["other"][f"{status} {body[:80].decode(errors='replace')}"] += 1
            self.send_next()

    def connection_lost(self, exc):
        if not self.done.done():
            self.shared["other"][f"connection lost: {exc}"] += 1
            self.done.set_result(None)


async def _load(port: int, requests: list[bytes], connections: int, max_seconds: float, go) -> dict:
    loop = asyncio.get_running_loop()
    shared = dict(
        requests=collections.deque(requests),
        latencies=[],
        accepted=0,
        other=collections.Counter(),
        deadline=float("inf"),
    )
    clients = []
    for _ in range(connections):
        _, proto = await loop.create_connection(lambda: _Client(shared), "127.0.0.1", port)
        proto.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(proto)
    await loop.run_in_executor(None, go.wait)  # every process connected: start together
    cpu0, t0 = time.process_time(), time.perf_counter()
    shared["deadline"] = t0 + max_seconds
    for c in clients:
        c.send_next()
    await asyncio.gather(*(c.done for c in clients))
    t1, cpu1 = time.perf_counter(), time.process_time()
    for c in clients:
        c.transport.close()
    return dict(
        t0=t0,
        t1=t1,
        cpu=cpu1 - cpu0,
        latencies=shared["latencies"],
        accepted=shared["accepted"],
        other=dict(shared["other"]),
        unsent=len(shared["requests"]),
    )


def loadgen_main(
    port: int, tag: str, start: int, n: int, connections: int, max_seconds: float, ready, go, results
) -> None:
    """Child process: build and sign n events, connect, wait for `go`, send them all, report."""
    try:
        events = common.make_events(KIND, tag, start, n)
        stamp = int(time.time())
        requests = []
        for ev in events:
            body = common.dumps(ev)
            raw = body.encode()
            head = (
                f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Stripe-Signature: {common.sign(body, common.SECRET, stamp)}\r\nContent-Length: {len(raw)}\r\n\r\n"
            )
            requests.append(head.encode() + raw)
        ready.put(os.getpid())
        results.put(uvloop.run(_load(port, requests, connections, max_seconds, go)))
    except BaseException as exc:
        ready.put(os.getpid())
        results.put(dict(error=f"{type(exc).__name__}: {exc}"))


async def run_load(
    port: int,
    tag: str,
    n: int,
    concurrency: int,
    procs: int,
    max_seconds: float,
    server_pid: int,
    database: str | None = None,
) -> dict:
    """n signed requests from `procs` processes over `concurrency` connections; rate, latencies, CPU."""
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    children = []
    for p in range(procs):
        share_n = n // procs + (1 if p < n % procs else 0)
        share_c = concurrency // procs + (1 if p < concurrency % procs else 0)
        start = sum(n // procs + (1 if q < n % procs else 0) for q in range(p))
        child = ctx.Process(
            target=loadgen_main, args=(port, tag, start, share_n, share_c, max_seconds, ready, go, results), daemon=True
        )
        child.start()
        children.append(child)
    loop = asyncio.get_running_loop()
    for _ in children:
        await loop.run_in_executor(None, ready.get, True, 120)
    await asyncio.sleep(0.3)  # let the children connect (they wait for `go` once connected)
    meter = common.CpuMeter({"server": server_pid}, database)
    meter.start()
    go.set()
    outs = [await loop.run_in_executor(None, results.get, True, max_seconds + 120) for _ in children]
    used = meter.stop()
    for child in children:
        child.join(10)
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        raise RuntimeError("load generator failed: " + "; ".join(errors))
    wall = max(o["t1"] for o in outs) - min(o["t0"] for o in outs)
    used["client"] = sum(o["cpu"] for o in outs) / wall
    other: collections.Counter = collections.Counter()
    for o in outs:
        other.update(o["other"])
    accepted = sum(o["accepted"] for o in outs)
    return dict(
        rate=accepted / wall,
        accepted=accepted,
        wall=wall,
        cpu=used,
        other=dict(other),
        latencies=[x for o in outs for x in o["latencies"]],
        unsent=sum(o["unsent"] for o in outs),
    )


# --- the floor ---------------------------------------------------------------------------------------


async def run_floor(
    pool: asyncpg.Pool,
    rows: list,
    concurrency: int,
    max_seconds: float,
    statements: list[str],
    database: str | None = None,
) -> dict:
    """`concurrency` clients sharing `pool`, each row through `statements` (one transaction each)."""
    it = iter(rows)
    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        for args in it:
            if time.perf_counter() > deadline:
                break
            t = time.perf_counter()
            async with pool.acquire() as conn:
                for i, sql in enumerate(statements):
                    if i == len(statements) - 1:
                        await conn.fetchval(sql, *args)
                    else:
                        await conn.fetchval(sql)
            latencies.append(time.perf_counter() - t)

    meter = common.CpuMeter({"client": os.getpid()}, database)
    meter.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return dict(rate=len(latencies) / wall, accepted=len(latencies), wall=wall, cpu=meter.stop(), latencies=latencies)


# --- the server --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def server(db_url: str, redis_url: str, queue_name: str, ratelimit: bool, pool_size: int, log_path: Path):
    """`python -m aipt web` (what `aipt web` runs) on a free loopback port; yields (port, pid)."""
    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        STRIPE_WEBHOOK_SECRET=common.SECRET,
        PORT=str(port),
        LOG_FORMAT="json",
        AIPT_WEB_HOST="127.0.0.1",
        AIPT_QUEUE_NAME=queue_name,
        AIPT_RATELIMIT_WEBHOOK_ENABLED="true" if ratelimit else "false",
        AIPT_DB_POOL_MAX_SIZE=str(pool_size),
        PYTHONPATH=str(common.ROOT),
    )
    log = log_path.open("ab")
    # BENCH_SERVER_CMD: another command serving the same app (e.g. a candidate fix), run like `aipt web`.
    command = os.environ.get("BENCH_SERVER_CMD", f"{sys.executable} -m aipt web").split()
    proc = subprocess.Popen(command, cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode}; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server was not ready within 30 s; see {log_path}")
                await asyncio.sleep(0.1)
        yield port, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def start_py_spy(prefix: str | None, pid: int, name: str) -> subprocess.Popen | None:
    """py-spy on the server into PREFIX<name>.txt, idle frames included; None without --py-spy."""
    if not prefix:
        return None
    out = f"{prefix}{name}.txt"
    print(f"   (py-spy records the server into {out}; it costs the machine some CPU)")
    return common.start_py_spy(out, pid, idle=True)


# --- the run -----------------------------------------------------------------------------------------

ENDPOINT = "endpoint: POST /webhooks/stripe"
FLOOR = "floor: bare INSERT (insert_event)"


def fmt_row(name: str, r: dict, order: list[str], prefix: str = "") -> str:
    lat = r["latencies"]
    main = order[0]
    per = 1e6 * r["cpu"][main] / r["rate"] if r["rate"] else float("nan")
    return (
        f"{prefix:<4}{name:<40} {r['rate']:>6.0f}/s  p50 {1000 * common.pct(lat, 50):>6.2f} ms  "
        f"p99 {1000 * common.pct(lat, 99):>6.2f} ms  {main} cpu/req {per:>4.0f} us  {common.cpu_line(r['cpu'], order)}"
    )


def summarize(results: list[dict]) -> dict:
    return dict(
        rate=common.median([r["rate"] for r in results]),
        latencies=[x for r in results for x in r["latencies"]],
        cpu={k: common.median([r["cpu"][k] for r in results]) for k in results[0]["cpu"]},
        accepted=sum(r["accepted"] for r in results),
    )


def floors_for(ratelimit: bool) -> dict[str, list[str]]:
    """What the endpoint is compared with: statements run by bare asyncpg clients, one transaction each."""
    floors = {FLOOR: [INSERT]}
    if ratelimit:
        floors["reference: a check per webhook + INSERT"] = [CHECK_ONE, INSERT]
    return floors


async def run_mode(args, url: str, redis_url: str, ratelimit: bool, workdir: Path, mode_no: int) -> dict:
    title = (
        "rate limit ON (the shipped default; bucket raised so that nothing is refused)"
        if ratelimit
        else "rate limit OFF (AIPT_RATELIMIT_WEBHOOK_ENABLED=false)"
    )
    print(f"\n== endpoint with {title}")
    floors = floors_for(ratelimit)
    if ratelimit:
        async with connection(url) as conn:
            await conn.execute(
                "update public.rate_limit_config set requests_per_minute = 2000000000, "
                "burst_size = 2000000000 where endpoint_key = 'stripe_webhook'"
            )
    database = common.database_of(url)
    queue_name = f"aipt:bench:{os.getpid()}:{mode_no}"
    # The floor's pool is the server's: same size, and no reset round trip on release (aipt.db's choice).
    pool = await asyncpg.create_pool(url, min_size=args.pool_size, max_size=args.pool_size, reset=db._no_reset)
    results: dict[str, list[dict]] = {name: [] for name in [*floors, ENDPOINT]}
    try:
        async with server(url, redis_url, queue_name, ratelimit, args.pool_size, workdir / "server.log") as (port, pid):
            # Warm-up: connections opened, statements prepared, code paths hot.
            await run_load(
                port, f"m{mode_no}w", args.warmup, args.concurrency, args.client_procs, args.max_seconds, pid
            )
            for f, statements in enumerate(floors.values()):
                events = common.make_events(KIND, f"m{mode_no}f{f}w", 0, args.warmup)
                await run_floor(
                    pool,
                    [common.row_args(e, common.dumps(e)) for e in events],
                    args.concurrency,
                    args.max_seconds,
                    statements,
                )
            spy = start_py_spy(args.py_spy, pid, f"ingest-{'on' if ratelimit else 'off'}")
            try:
                for rnd in range(1, args.rounds + 1):
                    for f, (name, statements) in enumerate(floors.items()):
                        events = common.make_events(KIND, f"m{mode_no}f{f}r{rnd}_", 0, args.events)
                        r = await run_floor(
                            pool,
                            [common.row_args(e, common.dumps(e)) for e in events],
                            args.concurrency,
                            args.max_seconds,
                            statements,
                            database,
                        )
                        results[name].append(r)
                        print(fmt_row(name, r, ["postgres", "client"], f"r{rnd}"))
                    r = await run_load(
                        port,
                        f"m{mode_no}r{rnd}_",
                        args.events,
                        args.concurrency,
                        args.client_procs,
                        args.max_seconds,
                        pid,
                        database,
                    )
                    results[ENDPOINT].append(r)
                    print(fmt_row(ENDPOINT, r, ["server", "client", "postgres"], f"r{rnd}"))
                    if r["other"]:
                        print(f"    not accepted: {r['other']}")
                    if r["unsent"]:
                        print(f"    {r['unsent']} requests not sent (the --max-seconds bound)")
            finally:
                common.stop_py_spy(spy)
            await asyncio.sleep(1)  # the enqueue runs after the response: let the last ones finish
        queued = await queue_length(redis_url, queue_name)
    finally:
        await pool.close()
    accepted = args.warmup + sum(x["accepted"] for x in results[ENDPOINT])
    summary = {name: summarize(rs) for name, rs in results.items()}
    print(f"-- summary ({title}): median rate of {args.rounds} rounds, latencies pooled")
    for name, s in summary.items():
        print(fmt_row(name, s, ["server", "client", "postgres"] if name == ENDPOINT else ["postgres", "client"]))
    # Round by round: the floor and the endpoint of a round ran back to back, so they saw the same host
    # speed (it drifts by tens of percent within a minute); the median of those ratios is the figure.
    per_round = [e["rate"] / f["rate"] for e, f in zip(results[ENDPOINT], results[FLOOR], strict=True)]
    ratio = common.median(per_round)
    print(
        f"  ratio endpoint / bare INSERT: {100 * ratio:.0f}%, median of the rounds' "
        f"{', '.join(f'{100 * x:.0f}' for x in per_round)}%  (target >= 50%)"
    )
    print(
        f"  the load generator used {summary[ENDPOINT]['cpu']['client']:.2f} cores (it is not the limit "
        f"while well under 1 per --client-procs)"
    )
    print(f"  jobs enqueued by the endpoint: {queued} of {accepted} accepted events (warm-up included)")
    busy = max(r["cpu"]["others"] for rs in results.values() for r in rs)
    if busy > 0.25:
        print(f"  WARNING: other work used up to {busy:.2f} cores during a round (noisy neighbour): run again")
    return dict(title=title, summary=summary, ratio=ratio, busy=busy)


async def queue_length(redis_url: str, queue_name: str) -> int:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    try:
        return await r.zcard(queue_name)
    finally:
        await r.aclose()


@contextlib.asynccontextmanager
async def connection(url: str):
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32, help="connections / floor clients (default 32)")
    parser.add_argument("--events", type=int, default=5000, help="events per round and contender (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1000, help="warm-up events per contender (default 1000)")
    parser.add_argument("--max-seconds", type=float, default=30, help="bound on one round (default 30)")
    parser.add_argument("--client-procs", type=int, default=1, help="load generator processes (default 1)")
    parser.add_argument(
        "--ratelimit",
        choices=["off", "on", "both"],
        default="both",
        help="the endpoint's webhook rate limit during the run (default both, one after the other)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="server and floor pool size (default settings.toml [db] pool_max_size)",
    )
    parser.add_argument(
        "--py-spy", metavar="PREFIX", help="record the server with py-spy into PREFIX<mode>.txt (collapsed stacks)"
    )
    common.add_scratch_arguments(parser)
    args = parser.parse_args()
    from aipt import settings as settings_mod

    args.pool_size = args.pool_size or settings_mod.load().db.pool_max_size
    if args.concurrency < args.client_procs:
        parser.error("--concurrency must be at least --client-procs")

    sample = common.dumps(common.make_events(KIND, "size", 0, 1)[0])
    print(
        f"ingest benchmark: {args.rounds} rounds x {args.events} events ({len(sample)} bytes, {KIND} copies), "
        f"concurrency {args.concurrency}, pool {args.pool_size}, {args.client_procs} client process(es), "
        f"{os.cpu_count()} cores"
    )
    print("cpu columns: cores busy during the round (1.00 = one core all the time); 'others' = the rest of the machine")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.ratelimit]
    outcomes = []
    with (
        tempfile.TemporaryDirectory(prefix="aipt-bench-ingest-") as tmp,
        common.claimed_redis_db(args.redis_db) as redis_url,
    ):
        async with common.scratch_database("aipt_bench_ingest", extra_sql=args.extra_sql) as url:
            for n, ratelimit in enumerate(modes):
                outcomes.append(await run_mode(args, url, redis_url, ratelimit, Path(tmp), n))
            async with connection(url) as conn:
                stored = await conn.fetchval("select count(*) from public.stripe_events")
            log_lines = sum(1 for _ in (Path(tmp) / "server.log").open("rb"))
    print(f"\nrows stored in all: {stored}; server log lines: {log_lines}")
    for o in outcomes:
        s = o["summary"]
        print(
            f"RESULT {o['title']}: endpoint {s[ENDPOINT]['rate']:.0f}/s "
            f"(p50 {1000 * common.pct(s[ENDPOINT]['latencies'], 50):.1f} ms, p99 {1000 * common.pct(s[ENDPOINT]['latencies'], 99):.1f} ms), "
            f"bare INSERT {s[FLOOR]['rate']:.0f}/s, ratio {100 * o['ratio']:.0f}%"
            + ("  [noisy machine]" if o["busy"] > 0.25 else "")
        )


if __name__ == "__main__":
    uvloop.run(main())
