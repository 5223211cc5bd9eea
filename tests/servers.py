"""Fixtures and helpers on real services, for the integration and acceptance tiers.

A template database built by the migrations once per session, cloned per test; a Redis database of
its own per test run, claimed on first use (not at import: the unit tier imports nothing of this).
tests/integration/conftest.py and tests/acceptance/conftest.py make these fixtures theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import stripe
import structlog

from aipt import migrate, queue
from aipt import settings as settings_mod
from tests.proxy import Proxy

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER = os.environ.get("TEST_REDIS_SERVER", "redis://127.0.0.1:6379")
TEMPLATE = f"aipt_tpl_{os.getpid()}"
REDIS_CLAIM_KEY = "aipt:test:owner"


def database_url(name: str) -> str:
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(ADMIN_URL)


async def create_database(name: str, template: str | None = None) -> str:
    conn = await _admin()
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
        await conn.execute(f'create database "{name}"' + (f' template "{template}"' if template else ""))
    finally:
        await conn.close()
    return database_url(name)


async def drop_database(name: str) -> None:
    conn = await _admin()
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


@functools.cache
def claimed_redis_url() -> str:
    """A Redis database (1-15) no other test run is using, claimed on first use: runs in parallel must
    not flush each other. TEST_REDIS_URL names one instead."""
    if os.environ.get("TEST_REDIS_URL"):
        return os.environ["TEST_REDIS_URL"]
    import redis as redis_sync

    for n in range(1, 16):
        client = redis_sync.Redis.from_url(f"{REDIS_SERVER}/{n}")
        try:
            if client.set(REDIS_CLAIM_KEY, os.getpid(), nx=True, ex=3600):
                return f"{REDIS_SERVER}/{n}"
        finally:
            client.close()
    raise RuntimeError("no free Redis database for tests (1-15 all claimed)")


@pytest.fixture(scope="session", autouse=True)
def release_redis_db():
    yield
    if claimed_redis_url.cache_info().currsize:  # claimed by this run
        import redis as redis_sync

        client = redis_sync.Redis.from_url(claimed_redis_url())
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
async def template_db():
    """A database where every migration ran; each test clones it."""
    url = await create_database(TEMPLATE)
    conn = await asyncpg.connect(url)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    yield TEMPLATE
    await drop_database(TEMPLATE)


@pytest.fixture
async def db_url(template_db):
    """A fresh, fully migrated database for one test."""
    name = f"aipt_t_{uuid.uuid4().hex[:12]}"
    url = await create_database(name, template=template_db)
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
def supabase():
    """A Supabase-shaped cluster (shared/supabase), built once per session; every database on it is shaped so."""
    from tests.supabase import Cluster

    cluster = Cluster()
    yield cluster
    cluster.close()


@pytest.fixture
async def conn(db_url):
    """A superuser connection to the test's database."""
    c = await asyncpg.connect(db_url)
    yield c
    await c.close()


@pytest.fixture
async def pool(db_url):
    p = await asyncpg.create_pool(db_url, min_size=1, max_size=10)
    yield p
    await p.close()


# --- services: settings, signing, the app, the worker ------------------------------------------

SECRET = "whsec_test_primary"
OTHER_SECRET = "whsec_test_rotated"


def make_settings(db_url: str, redis_url: str | None = None, **sections) -> settings_mod.Settings:
    """Settings for one test: its own database, its own queue name, fast retries unless told otherwise."""
    base = settings_mod.load()
    update = dict(
        database_url=db_url,
        redis_url=redis_url or claimed_redis_url(),
        stripe_webhook_secret=f"{SECRET},{OTHER_SECRET}",
        log_format="console",
        queue=base.queue.model_copy(update=dict(name=f"aipt:test:{uuid.uuid4().hex[:8]}", poll_delay_seconds=0.01)),
        retry=base.retry.model_copy(update=dict(base_seconds=0.05, cap_seconds=0.2)),
    )
    for name, values in sections.items():
        current = update.get(name, getattr(base, name))
        update[name] = current.model_copy(update=values) if isinstance(values, dict) else values
    return base.model_copy(update=update)


def sweeping_fresh_rows(s: settings_mod.Settings) -> settings_mod.Settings:
    """The same settings with a sweeper that re-enqueues pending rows however fresh they are: for tests
    of lost enqueues. Elsewhere the sweeper keeps its grace period, so that its start-up run does not
    race the test's own jobs and add a second, "not due" run of an event just applied."""
    return s.model_copy(update={"sweeper": s.sweeper.model_copy(update={"pending_after_seconds": 0})})


def sign(body: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)


@pytest.fixture(autouse=True)
async def clean_test_redis():
    """Job keys are global in Redis (arq:job:<id>) and fixtures reuse event ids: start each test empty."""
    r = queue.connect(make_settings("postgresql:///unused"))
    await r.flushdb()
    await r.set(REDIS_CLAIM_KEY, os.getpid(), ex=3600)
    await queue.close(r)


@pytest.fixture
def settings(db_url):
    return make_settings(db_url)


@pytest.fixture
async def redis(settings):
    r = queue.connect(settings)
    yield r
    await queue.close(r)


@pytest.fixture
async def client(settings):
    """The real ASGI app (lifespan included) on real Postgres and Redis."""
    from ingest.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as c:
            c.app = app  # tests reach the doorbell: `await client.app.state.doorbell.flush()`
            yield c


async def post_event(client: httpx.AsyncClient, event: dict | str, secret: str = SECRET, timestamp: int | None = None):
    body = event if isinstance(event, str) else json.dumps(event)
    return await client.post(
        "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, secret, timestamp)}
    )


async def run_worker(settings: settings_mod.Settings, **overrides) -> None:
    """Process everything queued now (arq burst mode), then return."""
    from worker.main import build

    w = build(settings, **{"burst": True, "handle_signals": False, **overrides})
    try:
        await w.main()
    finally:
        await w.close()


async def wait_for(predicate, timeout: float = 10, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
async def pg_proxy():
    parts = urlsplit(ADMIN_URL)
    p = await Proxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    yield p
    await p.close()


@pytest.fixture
async def redis_proxy():
    parts = urlsplit(claimed_redis_url())
    p = await Proxy(parts.hostname or "127.0.0.1", parts.port or 6379).start()
    yield p
    await p.close()


def through(url: str, proxy: Proxy) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username + '@' if parts.username else ''}127.0.0.1:{proxy.port}").geturl()


@contextlib.contextmanager
def captured_logs():
    """structlog entries, with the bound context (event_id, ...) merged in as in production."""
    capture = structlog.testing.LogCapture()
    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, capture]
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**previous)


class Ran:
    """What a finished `aipt` process did."""

    def __init__(self, code: int, stdout: str, stderr: str):
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr
        self.output = stdout + stderr

    def __repr__(self) -> str:
        return f"<aipt exit {self.exit_code}: {self.output[-2000:]}>"


async def run_aipt(
    *args: str,
    input: str | None = None,
    env: dict | None = None,
    timeout: float = 60,
    environ: dict | None = None,
    cwd: str | None = None,
) -> Ran:
    """The real `aipt` process (python -m aipt), with this process' environment and working directory
    (or `environ` and `cwd`), plus `env`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aipt",
        *[str(a) for a in args],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**(os.environ if environ is None else environ), "COLUMNS": "200", **(env or {})},
        cwd=cwd or os.getcwd(),
    )
    out, err = await asyncio.wait_for(proc.communicate(input.encode() if input is not None else b""), timeout)
    return Ran(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def aipt(settings, db_url, monkeypatch, tmp_path):
    """Run `aipt ARGS...` as a real process against the test's database, Redis db and queue."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("AIPT_QUEUE_NAME", settings.queue.name)
    monkeypatch.setenv("AIPT_DEV_DATA", str(tmp_path / "no-dev"))  # never a developer's .aipt/dev.env
    monkeypatch.setenv("AIPT_OPERATOR", "ops@test")

    async def invoke(*args: str, input: str | None = None, **env: str) -> Ran:
        return await run_aipt(*args, input=input, env=env)

    invoke.settings = settings
    return invoke
