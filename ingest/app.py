"""The ASGI app: POST /webhooks/stripe, /healthz, /readyz, /metrics.

An event is acknowledged only after its row is committed; the enqueue that follows is best effort and
batched off the request path, because the worker's sweeper finds every pending row even if Redis
never heard of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from aipt import db, logs, metrics, queue, settings
from aipt.logs import log
from ingest import webhook


class TooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class Limited(Exception):
    """The stripe_webhook bucket is empty; Stripe should come back after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"rate limited; retry after {retry_after} s")
        self.retry_after = retry_after


async def store(pool: asyncpg.Pool, event: webhook.Event, s: settings.Settings) -> bool:
    """Commit the event; True when it is new, False for a redelivery. Raises Limited past the limit."""
    args = (event.id, event.type, event.api_version, event.created, event.livemode, event.body)
    try:
        async with pool.acquire(timeout=s.db.connect_timeout_seconds) as conn:
            if s.ratelimit.webhook_enabled:
                allowed, retry_after = await conn.fetchrow(db.queries["check_webhook_limit"])
                if not allowed:
                    raise Limited(retry_after)
            return await conn.fetchval(db.queries["insert_event"], *args) is not None
    except asyncpg.DataError as exc:
        # JSON that Postgres cannot hold (e.g. \u0000 in a string) is bad input, not an outage.
        raise webhook.Rejected(f"body cannot be stored as JSON: {exc}") from None
    except (*db.UNAVAILABLE, asyncpg.PostgresError) as exc:
        raise db.DatabaseUnavailable(str(exc) or type(exc).__name__) from exc


async def stripe_webhook(request: Request) -> JSONResponse:
    started = time.perf_counter()
    response, outcome = await receive(request)
    metrics.WEBHOOKS.labels(outcome=outcome).inc()
    metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)
    return response


async def receive(request: Request) -> tuple[JSONResponse, str]:
    """Answer one delivery; returns the response and its outcome label."""
    s: settings.Settings = request.app.state.settings
    try:
        body = await read_body(request, s.web.body_limit_bytes)
        text = webhook.verify(body, request.headers.get("stripe-signature"), s.webhook_secrets, s.web.signature_tolerance_seconds)
        event = webhook.parse(text)
        new = await store(request.app.state.pool, event, s)
    except TooLarge:
        return JSONResponse({"error": f"body over {s.web.body_limit_bytes} bytes"}, status_code=413), "too_large"
    except webhook.Rejected as exc:
        log.info("webhook rejected", reason=str(exc))
        return JSONResponse({"error": str(exc)}, status_code=400), "rejected"
    except Limited as exc:
        log.warning("webhook rate limited", event_id=event.id, retry_after=exc.retry_after)
        headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse({"error": str(exc)}, status_code=429, headers=headers), "rate_limited"
    except db.DatabaseUnavailable as exc:
        log.error("webhook not stored: database unavailable", error=str(exc))
        return JSONResponse({"error": "database unavailable, retry later"}, status_code=503), "unavailable"
    outcome = "accepted" if new else "duplicate"
    log.info("webhook " + outcome, event_id=event.id, event_type=event.type)
    if new:
        request.app.state.doorbell.ring(event.id)
    return JSONResponse({"received": True, "duplicate": not new}), outcome


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    checks = {}
    try:
        async with asyncio.timeout(2):
            async with request.app.state.pool.acquire() as conn:
                await conn.fetchval(db.queries["ping"])
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["postgres"] = f"down: {type(exc).__name__}"
    try:
        async with asyncio.timeout(2):
            await request.app.state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"down: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(checks, status_code=200 if ready else 503)


async def metrics_endpoint(request: Request) -> PlainTextResponse:
    body, content_type = metrics.render()
    return PlainTextResponse(body, media_type=content_type)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    s: settings.Settings = app.state.settings
    # min_size=0: the app starts (and answers 503) while Postgres is down, and heals when it is back.
    app.state.pool = await db.create_pool(s, min_size=0)
    app.state.redis = queue.connect(s)
    app.state.doorbell = queue.Doorbell(app.state.redis)
    app.state.doorbell.start()
    try:
        yield
    finally:
        await app.state.doorbell.close()
        try:
            await asyncio.wait_for(app.state.pool.close(), 10)
        except TimeoutError:
            log.warning("database pool did not close in 10 s; terminating it")
            app.state.pool.terminate()
        await queue.close(app.state.redis)


def create_app(s: settings.Settings | None = None) -> Starlette:
    s = s or settings.get()
    s.require("database_url", "redis_url", "stripe_webhook_secret")
    logs.configure(s.log_format, s.log_level)
    app = Starlette(
        routes=[
            Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ],
        lifespan=lifespan,
    )
    app.state.settings = s
    return app
