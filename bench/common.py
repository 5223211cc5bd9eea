"""What the ingest and worker benchmarks share: a scratch database, a Redis db, events, signing, numbers.

Everything here is loopback-only and cleans up after itself: the scratch database is dropped and the
claimed Redis db is flushed when the benchmark ends, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import psutil  # noqa: E402
import stripe  # noqa: E402

from aipt import fixtures, migrate  # noqa: E402
from aipt import settings as settings_mod  # noqa: E402

ADMIN_URL = os.environ.get(
    "BENCH_ADMIN_URL", os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
REDIS_SERVER = os.environ.get("BENCH_REDIS_SERVER", "redis://127.0.0.1:6379")
# The key the test suite uses to claim a Redis db (tests/servers.py): holding it keeps test runs off ours.
REDIS_CLAIM_KEY = "aipt:test:owner"
SECRET = "whsec_bench_secret"


def add_scratch_arguments(parser) -> None:
    """The options every benchmark on a scratch database takes: --extra-sql and --redis-db."""
    parser.add_argument(
        "--extra-sql",
        metavar="FILE",
        action="append",
        type=Path,
        help="SQL run on the scratch database after the migrations (a candidate fix); repeatable",
    )
    parser.add_argument("--redis-db", type=int, default=14, help="preferred empty Redis db (default 14)")


DEMO_NEURON = "17ea841a-9ee1-4f9e-87e6-a1f2dbc1edd3"


# --- profiling -------------------------------------------------------------------------------------


def start_py_spy(out: str | None, pid: int, idle: bool = False) -> subprocess.Popen | None:
    """py-spy sampling `pid` into `out` (collapsed stacks) until stop_py_spy; None when out is None.
    idle: count samples where the process waits too (for a server, where waiting is part of the story)."""
    if not out:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            *(["--idle"] if idle else []),
            "--rate",
            "200",
            "--nonblocking",
            "--output",
            out,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_py_spy(spy: subprocess.Popen | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()


# --- numbers ---------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values; nan when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered))) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class CpuMeter:
    """CPU seconds used by some processes (and by the whole machine) between start() and stop()."""

    def __init__(self, pids: dict[str, int], database: str | None = None):
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.database = database

    def _ours(self, cmdline: list[str]) -> bool:
        """A Postgres backend of our database, or a shared background process (not another database's)."""
        title = " ".join(cmdline)
        backend = re.match(r"postgres: \S+ (\S+) (\S+\(\d+\)|\[local\])", title)
        if backend:
            return self.database is None or backend.group(1) == self.database
        if "autovacuum worker" in title:
            return self.database is None or self.database in title
        return True

    def _by_name(self) -> dict[tuple[str, int], float]:
        """CPU seconds of our Postgres processes and of Redis, by (kind, pid): backends come and go."""
        out = {}
        for p in psutil.process_iter(["name", "cmdline"]):
            name = p.info["name"] or ""
            kind = "postgres" if name.startswith("postgres") else "redis" if name.startswith("redis-server") else None
            if kind == "postgres" and not self._ours(p.info["cmdline"] or []):
                continue
            if kind:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    out[(kind, p.pid)] = t.user + t.system
        return out

    def _sample(self) -> dict:
        out: dict = {}
        for name, p in self.procs.items():
            total = 0.0
            for q in [p, *p.children(recursive=True)]:  # uvicorn --workers: the worker processes count too
                with contextlib.suppress(psutil.Error):
                    t = q.cpu_times()
                    total += t.user + t.system
            out[name] = total
        out["servers"] = self._by_name()
        busy = psutil.cpu_times()
        out["machine"] = busy.user + busy.system + busy.nice + busy.irq + busy.softirq
        return out

    def start(self) -> None:
        self.t0, self.s0 = time.perf_counter(), self._sample()

    def stop(self) -> dict[str, float]:
        """Cores used by each (1.0 = one core busy all the time), and 'cores' = how many the machine has."""
        wall, s1 = time.perf_counter() - self.t0, self._sample()
        used = {k: (s1[k] - self.s0[k]) / wall for k in s1 if k != "servers"}
        for kind in ("postgres", "redis"):
            # A process that ended meanwhile is lost; one that started counts from zero.
            used[kind] = (
                sum(t - self.s0["servers"].get(key, 0.0) for key, t in s1["servers"].items() if key[0] == kind) / wall
            )
        used["cores"] = psutil.cpu_count()
        # Whatever else ran meanwhile (other users of the machine, other databases): a noisy neighbour.
        used["others"] = max(0.0, used["machine"] - sum(v for k, v in used.items() if k not in ("machine", "cores")))
        return used


def cpu_line(used: dict[str, float], order: list[str]) -> str:
    parts = [f"{k} {used[k]:.2f}" for k in [*order, "redis"] if k in used]
    return f"cpu (cores busy): {', '.join(parts)}, others {used['others']:.2f}; machine {used['machine']:.2f} of {used['cores']}"


# --- the scratch database --------------------------------------------------------------------------


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def url_for(name: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def scratch_database(
    prefix: str, seed_demo: bool = True, extra_sql: list[Path] | None = None
) -> AsyncIterator[str]:
    """A fresh database with every migration applied (and the demo catalogue), then extra_sql (e.g. a
    candidate fix to measure before it becomes a migration); dropped at the end."""
    name = f"{prefix}_{os.getpid()}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    url = url_for(name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await migrate.migrate(conn)
            if seed_demo:
                await conn.execute((ROOT / "aipt" / "fixtures" / "demo.sql").read_text())
            for path in extra_sql or []:
                await conn.execute(Path(path).read_text())
        finally:
            await conn.close()
        yield url
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await admin.close()


# --- Redis -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def claimed_redis_db(preferred: int = 14) -> Iterator[str]:
    """A Redis db nobody uses (empty, claimed with the test suite's owner key); flushed at the end."""
    import redis as redis_sync

    order = [preferred] + [n for n in range(15, 0, -1) if n != preferred]
    for n in order:
        client = redis_sync.Redis.from_url(f"{REDIS_SERVER}/{n}")
        try:
            if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, f"bench:{os.getpid()}", nx=True, ex=3600):
                break
        finally:
            client.close()
    else:
        raise RuntimeError("no empty Redis db (1-15) to claim for the benchmark")
    url = f"{REDIS_SERVER}/{n}"
    try:
        yield url
    finally:
        client = redis_sync.Redis.from_url(url)
        try:
            if client.get(REDIS_CLAIM_KEY) == f"bench:{os.getpid()}".encode():
                client.flushdb()
        finally:
            client.close()


# --- settings --------------------------------------------------------------------------------------


def bench_settings(db_url: str, redis_url: str, queue_name: str, **sections) -> settings_mod.Settings:
    """settings.toml as shipped, pointed at the scratch services; sections override (like make_settings)."""
    base = settings_mod.load()
    update: dict = dict(
        database_url=db_url,
        redis_url=redis_url,
        stripe_webhook_secret=SECRET,
        queue=base.queue.model_copy(update=dict(name=queue_name)),
    )
    for name, values in sections.items():
        current = update.get(name, getattr(base, name))
        update[name] = current.model_copy(update=values) if isinstance(values, dict) else values
    return base.model_copy(update=update)


# --- events ----------------------------------------------------------------------------------------


def _suffix(tag: str, i: int) -> str:
    return f"{tag}{i:07d}"


def _copy(kind: str, tag: str, i: int, template: dict | None, neuron: str) -> tuple[dict, dict, str, str]:
    """A copy of a fixture with its own event id and created, bought by its own user: (event, object, suffix, user)."""
    ev = copy.deepcopy(template or fixtures.load(kind))
    s = _suffix(tag, i)
    ev["id"] = f"evt_bench_{s}"
    ev["created"] = 1788000000 + i
    user = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-user-{s}"))
    obj = ev["data"]["object"]
    obj["metadata"] = {"user_id": user, "neuron_id": neuron}
    return ev, obj, s, user


def checkout_event(tag: str, i: int, template: dict | None = None, neuron: str = DEMO_NEURON) -> dict:
    """A copy of the checkout.session.completed fixture (~3 KB) with its own event, session, intent,
    customer and user, buying the demo neuron."""
    ev, obj, s, user = _copy("checkout.session.completed", tag, i, template, neuron)
    obj.update(id=f"cs_bench_{s}", payment_intent=f"pi_bench_{s}", customer=f"cus_bench_{s}", client_reference_id=user)
    return ev


def payment_intent_event(tag: str, i: int, template: dict | None = None, neuron: str = DEMO_NEURON) -> dict:
    """A copy of the payment_intent.succeeded fixture with its own event, intent, customer and user."""
    ev, obj, s, _ = _copy("payment_intent.succeeded", tag, i, template, neuron)
    obj.update(id=f"pi_bench_{s}", customer=f"cus_bench_{s}", latest_charge=f"ch_bench_{s}")
    return ev


MAKERS = {"checkout.session.completed": checkout_event, "payment_intent.succeeded": payment_intent_event}


def make_events(kind: str, tag: str, start: int, n: int, neurons: list[str] | None = None) -> list[dict]:
    """n distinct events of one kind ('mix' alternates the two purchase types), each buying the demo
    neuron, or one of `neurons` in turn."""
    templates = {k: fixtures.load(k) for k in MAKERS}
    kinds = list(MAKERS) if kind == "mix" else [kind]
    neurons = neurons or [DEMO_NEURON]
    return [
        MAKERS[kinds[i % len(kinds)]](tag, i, templates[kinds[i % len(kinds)]], neurons[i % len(neurons)])
        for i in range(start, start + n)
    ]


def row_args(event: dict, body: str) -> tuple:
    """The insert_event parameters, exactly as ingest passes them (id, type, api_version, created, livemode, body,
    and no reason to skip it)."""
    return (
        event["id"],
        event["type"],
        event.get("api_version"),
        event["created"],
        bool(event.get("livemode")),
        body,
        None,
    )


def sign(body: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    """A Stripe-Signature header for body, as Stripe makes it."""
    return stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)


def dumps(event: dict) -> str:
    return json.dumps(event, separators=(", ", ": "))
