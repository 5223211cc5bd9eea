"""The HTTP limits of the web process, on a real uvicorn server and raw sockets: a head too large (431), a
head or body too slow (408, closed), an idle connection, a kept-alive one left idle, too many at once
(503), and the server answering others all the while."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import uvicorn

from ingest.app import create_app
from ingest.http import protocol_for
from tests.servers import make_settings
from tests.supabase import free_port

LIMITS = {"max_header_bytes": 4096, "header_timeout_seconds": 0.5, "body_timeout_seconds": 0.5,
          "keepalive_timeout_seconds": 0.5, "max_connections": 20}  # fmt: skip


@contextlib.asynccontextmanager
async def serving(db_url, **web):
    s = make_settings(db_url, web={**LIMITS, **web})
    port = free_port()
    config = uvicorn.Config(
        create_app(s),
        host="127.0.0.1",
        port=port,
        http=protocol_for(s.web),
        loop="asyncio",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_keep_alive=s.web.keepalive_timeout_seconds,
        limit_concurrency=s.web.max_connections,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # uvicorn < 0.29; newer ones leave the test's signals alone
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


OPEN: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def _close_connections():
    yield
    while OPEN:
        writer = OPEN.pop()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def connect(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    OPEN.append(writer)
    return reader, writer


async def answer(reader, timeout=5) -> bytes:
    """Everything the server sends until it closes the connection (a reset after it: what came before)."""
    chunks = []
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    return b"".join(chunks)


async def healthz_ms(port) -> float:
    reader, writer = await connect(port)
    started = time.perf_counter()
    writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert (await answer(reader)).startswith(b"HTTP/1.1 200")
    writer.close()
    return (time.perf_counter() - started) * 1000


async def test_a_head_past_the_limit_is_431_and_closed(db_url):
    async with serving(db_url) as port:
        reader, writer = await connect(port)
        writer.write(
            b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nstripe-signature: t=1," + b"v1=" + b"a" * 8000 + b"\r\n\r\n"
        )
        got = await answer(reader)
        assert got.startswith(b"HTTP/1.1 431") and b"over 4096 bytes" in got
        writer.close()


async def test_a_never_ending_header_stops_at_the_limit_and_others_are_served(db_url):
    async with serving(db_url) as port:
        reader, writer = await connect(port)
        writer.write(b"POST /webhooks/stripe HTTP/1.1\r\nx-endless: ")
        sent = 0
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # up to 12.8 MB, if the server let it
                writer.write(b"b" * 65536)
                await writer.drain()
                sent += 65536
                if reader.at_eof() or writer.is_closing():
                    break
                await asyncio.sleep(0)
        got = await answer(reader)
        # The server answered 431 and closed; a client still writing may see a reset before the answer.
        assert got.startswith(b"HTTP/1.1 431") or got == b""
        assert sent < 13_000_000 and (reader.at_eof() or writer.is_closing())
        assert await healthz_ms(port) < 500


@pytest.mark.parametrize("what", ["nothing", "a byte at a time"])
async def test_a_slow_or_silent_head_is_408_and_closed(db_url, what):
    async with serving(db_url) as port:
        reader, writer = await connect(port)
        started = time.monotonic()
        reading = asyncio.create_task(answer(reader))
        if what == "a byte at a time":
            for byte in b"POST /webhooks/stripe HTTP/1.1\r\n":
                if reading.done():
                    break
                with contextlib.suppress(ConnectionError):
                    writer.write(bytes([byte]))
                    await writer.drain()
                await asyncio.sleep(0.05)
        got = await reading
        assert got.startswith(b"HTTP/1.1 408") and b"head not received in time" in got
        assert time.monotonic() - started < 2.5
        assert await healthz_ms(port) < 500


async def test_a_slow_body_is_408_and_closed_and_nothing_is_stored(db_url, conn):
    async with serving(db_url) as port:
        reader, writer = await connect(port)
        writer.write(
            b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\nstripe-signature: t=1,v1=x\r\n\r\n{"
        )
        got = await answer(reader)
        assert got.startswith(b"HTTP/1.1 408") and b"body not received in time" in got
    assert await conn.fetchval("select count(*) from public.stripe_events") == 0


async def test_an_idle_kept_alive_connection_is_closed(db_url):
    async with serving(db_url) as port:
        reader, writer = await connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        rest = await answer(reader)  # the body, then the server closes the idle connection
        assert rest.endswith(b'{"status":"ok"}') and time.monotonic() - started < 2.5


async def test_connections_past_the_bound_get_503(db_url):
    async with serving(db_url, max_connections=3, header_timeout_seconds=5) as port:
        idle = [await connect(port) for _ in range(3)]
        await asyncio.sleep(0.1)
        reader, writer = await connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert (await answer(reader)).startswith(b"HTTP/1.1 503")
        for _, w in idle:
            w.close()
