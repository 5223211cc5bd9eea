"""`aipt dev` and `aipt send-test-event`, as a newcomer runs them: here on embedded servers."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import psutil

from tests.conftest import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dev_env(tmp_path: Path, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "STRIPE_WEBHOOK_SECRET")}
    # Nothing listens on these ports, so dev must start its embedded Postgres and Redis.
    return {**env, "PORT": str(port), "AIPT_DEV_DATA": str(tmp_path / ".aipt"), "AIPT_DEV_PG_PORT": str(free_port()),
            "AIPT_DEV_REDIS_PORT": str(free_port()), "LOG_FORMAT": "json", "XDG_RUNTIME_DIR": str(tmp_path)}


async def test_dev_on_embedded_servers_applies_a_test_checkout_and_stops_cleanly(tmp_path):
    port, metrics_port = free_port(), free_port()
    env = {**dev_env(tmp_path, port), "AIPT_METRICS_WORKER_PORT": str(metrics_port)}
    log = open(tmp_path / "dev.log", "w")  # noqa: SIM115 - closed below
    dev = subprocess.Popen([sys.executable, "-m", "aipt", "dev"], env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        dev_file = tmp_path / ".aipt" / "dev.env"

        async def web_up():
            if dev.poll() is not None:
                raise AssertionError((tmp_path / "dev.log").read_text())
            with socket.socket() as s:
                return dev_file.exists() and s.connect_ex(("127.0.0.1", port)) == 0

        await wait_for(web_up, timeout=60, interval=0.2)
        # Local only: the web, and the worker's metrics once it is up, listen on 127.0.0.1 and nowhere else.
        async def listeners():
            found = {c.laddr.port: c.laddr.ip for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port in (port, metrics_port)}
            return found if len(found) == 2 else None

        assert await wait_for(listeners, timeout=30) == {port: "127.0.0.1", metrics_port: "127.0.0.1"}
        urls = dict(line.split("=", 1) for line in dev_file.read_text().splitlines())
        assert urls["REDIS_URL"].startswith("unix://") and "host=" in urls["DATABASE_URL"]

        sent = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "aipt", "send-test-event", "checkout.session.completed"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        event_id = sent.stdout.split()[1]
        conn = await asyncpg.connect(urls["DATABASE_URL"])
        try:
            async def applied():
                return await conn.fetchval("select status = 'ok' from public.stripe_events where id = $1", event_id)

            await wait_for(applied, timeout=20)
            assert await conn.fetchval("select count(*) from public.user_purchases") == 1
        finally:
            await conn.close()
        assert f'"event_id": "{event_id}"' in (tmp_path / "dev.log").read_text()
    finally:
        dev.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(dev.wait, 60)
        log.close()
    assert code == 0
    socket_path = urls["REDIS_URL"].removeprefix("unix://")
    assert not Path(socket_path).exists() or not _accepts(socket_path)
    pg_dir = urls["DATABASE_URL"].split("host=")[1]
    assert not (Path(pg_dir) / "postmaster.pid").exists()


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        return s.connect_ex(path) == 0
