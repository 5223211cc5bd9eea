"""The ASGI app: POST /webhooks/stripe, /healthz, /readyz, /metrics.

An event is acknowledged only after its row is committed; the enqueue that follows is best effort and
batched off the request path, because the worker's sweeper finds every pending row even if Redis
never heard of it.

The webhook is the one hot path, so it is plain ASGI: Starlette's middleware, router, Request and
JSONResponse cost ~60 µs of a ~300 µs webhook (docs/benchmarks.md). Starlette serves the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from aipt import db, logs, metrics, queue, settings
from aipt.logs import log
from ingest import limit, webhook

WEBHOOK_PATH = "/webhooks/stripe"


class TooLarge(Exception):
    pass


class Disconnected(Exception):
    """The client went away before sending the whole body: there is nobody to answer."""


class Limited(Exception):
    """The stripe_webhook bucket is empty; Stripe should come back after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"rate limited; retry after {retry_after} s")
        self.retry_after = retry_after


class App(Starlette):
    """Starlette, with the webhook answered before its middleware and router."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH:
            await stripe_webhook(self, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


async def read_body(scope: dict, receive, max_bytes: int) -> bytes:
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:  # also when a chunked body lied about (or never declared) its length
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def answer(status: int, body: dict, headers: tuple = ()) -> tuple[int, bytes, tuple]:
    return status, json.dumps(body, separators=(",", ":")).encode(), headers


ACCEPTED = answer(200, {"received": True, "duplicate": False})
DUPLICATE = answer(200, {"received": True, "duplicate": True})
NOT_ALLOWED = answer(405, {"error": "method not allowed: POST only"}, ((b"allow", b"POST"),))


async def store(app: App, event: webhook.Event, skipped: str | None) -> bool:
    """Commit the event (skipped, with that reason, when given); True when it is new, False for a redelivery.
    Raises Limited past the limit."""
    args = (event.id, event.type, event.api_version, event.created, event.livemode, event.body, skipped)
    # No timeout on acquire (asyncpg runs it as a task of its own, ~15 µs): a new connection is bounded
    # by the pool's connect timeout, a busy one by the command timeout of the query holding it.
    try:
        if app.state.webhook_limit is not None:
            retry_after = await app.state.webhook_limit.spend()
            if retry_after is not None:
                raise Limited(retry_after)
        async with app.state.pool.acquire() as conn:
            return await conn.fetchval(db.queries["insert_event"], *args) is not None
    except asyncpg.DataError as exc:
        # JSON that Postgres cannot hold (e.g. \u0000 in a string) is bad input, not an outage.
        raise webhook.Rejected(f"body cannot be stored as JSON: {exc}") from None
    except (*db.UNAVAILABLE, asyncpg.PostgresError) as exc:
        raise db.DatabaseUnavailable(str(exc) or type(exc).__name__) from exc


async def stripe_webhook(app: App, scope: dict, receive, send) -> None:
    started = time.perf_counter()
    try:
        (status, body, headers), outcome = await handle(app, scope, receive)
    except Disconnected:
        log.info("webhook abandoned: client disconnected mid-body")
        metrics.WEBHOOKS.labels(outcome="disconnected").inc()
        return
    except Exception:
        log.exception("webhook failed: unexpected error")
        (status, body, headers), outcome = answer(500, {"error": "internal error, retry later"}), "error"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
    metrics.WEBHOOKS.labels(outcome=outcome).inc()
    metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)


async def handle(app: App, scope: dict, receive) -> tuple[tuple, str]:
    """Answer one delivery; returns (status, body, headers) and the outcome label."""
    if scope["method"] != "POST":
        return NOT_ALLOWED, "not_allowed"
    s: settings.Settings = app.state.settings
    try:
        body = await read_body(scope, receive, s.web.body_limit_bytes)
        text = webhook.verify(
            body, header(scope, b"stripe-signature"), s.webhook_secrets, s.web.signature_tolerance_seconds
        )
        event = webhook.parse(text)
        skipped = s.stripe.refuses(event.livemode)
        new = await store(app, event, skipped)
    except TooLarge:
        return answer(413, {"error": f"body over {s.web.body_limit_bytes} bytes"}), "too_large"
    except webhook.Rejected as exc:
        log.info("webhook rejected", reason=str(exc))
        return answer(400, {"error": str(exc)}), "rejected"
    except Limited as exc:
        log.warning("webhook rate limited", event_id=event.id, retry_after=exc.retry_after)
        return answer(429, {"error": str(exc)}, ((b"retry-after", b"%d" % exc.retry_after),)), "rate_limited"
    except db.DatabaseUnavailable as exc:
        log.error("webhook not stored: database unavailable", error=str(exc))
        return answer(503, {"error": "database unavailable, retry later"}), "unavailable"
    if not new:
        log.info("webhook duplicate", event_id=event.id, event_type=event.type)
        return DUPLICATE, "duplicate"
    if skipped:
        log.warning("webhook stored, not applied", event_id=event.id, event_type=event.type, reason=skipped)
        return ACCEPTED, "skipped"
    log.info("webhook accepted", event_id=event.id, event_type=event.type)
    app.state.doorbell.ring(event.id)
    return ACCEPTED, "accepted"


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    checks = {}
    try:
        async with asyncio.timeout(2):
            async with request.app.state.pool.acquire() as conn:
                await conn.fetchval(db.queries["ping"])
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"down: {type(exc).__name__}"
    try:
        async with asyncio.timeout(2):
            await request.app.state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
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
    r = s.ratelimit
    app.state.webhook_limit = limit.WebhookLimit(app.state.pool, r.webhook_lease) if r.webhook_enabled else None
    try:
        yield
    finally:
        if app.state.webhook_limit is not None:
            await app.state.webhook_limit.close()
        await app.state.doorbell.close()
        try:
            await asyncio.wait_for(app.state.pool.close(), 10)
        except TimeoutError:
            log.warning("database pool did not close in 10 s; terminating it")
            app.state.pool.terminate()
        await queue.close(app.state.redis)


def create_app(s: settings.Settings | None = None) -> App:
    s = s or settings.get()
    s.require("database_url", "redis_url", "stripe_webhook_secret")
    logs.configure(s.log_format, s.log_level)
    app = App(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ],
        lifespan=lifespan,
    )
    app.state.settings = s
    return app
