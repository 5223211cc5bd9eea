"""Running the service: web, worker, and a signed test event like `stripe trigger`."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import stripe
import typer

from aipt import fixtures
from aipt.cli import common

# Public (it is in this repository): only `aipt dev` and `aipt send-test-event` ever use it.
DEV_SECRET = "whsec_aipt_local_development"


def web(
    dev: bool = typer.Option(False, "--dev", hidden=True, help="Started by `aipt dev`: 127.0.0.1, the development secret allowed."),
) -> None:
    """Serve the webhook endpoint (uvicorn, uvloop + httptools)."""
    import uvicorn

    def main() -> None:
        # Never from `aipt dev`'s file: a web started in that folder must not pick up its public secret.
        s = common.load_settings(dev_env=())
        s.require("database_url", "redis_url", "stripe_webhook_secret")
        if DEV_SECRET in s.webhook_secrets and not dev:
            raise common.CommandError(
                "STRIPE_WEBHOOK_SECRET holds the public development secret of `aipt dev`: anyone could sign "
                "events with it. Set the signing secret of your Stripe endpoint (whsec_..., in the dashboard).")
        from ingest.http import protocol_for

        uvicorn.run(
            "ingest.app:create_app", factory=True, host="127.0.0.1" if dev else s.web.host, port=s.port,
            loop="uvloop", http=protocol_for(s.web), access_log=False, log_config=None, lifespan="on",
            timeout_keep_alive=s.web.keepalive_timeout_seconds, limit_concurrency=s.web.max_connections,
        )

    common.run(main)


def worker() -> None:
    """Apply events from the queue and run the scheduled jobs (sweeper, cleanups)."""
    from worker.main import run

    common.run(lambda: run(common.load_settings(dev_env=())))


def signed_test_event(event_type: str, api: str, secret: str) -> tuple[dict, str, str]:
    """A shipped fixture with a fresh id and timestamp, and its Stripe-Signature header."""
    event = fixtures.load(event_type, api)
    event["id"] = "evt_test_" + uuid.uuid4().hex[:24]
    event["created"] = int(time.time())
    body = json.dumps(event)
    return event, body, stripe.WebhookSignature.generate_signature_header(body, secret)


def send_test_event(
    event_type: str = typer.Argument(..., help="e.g. checkout.session.completed (see --list)"),
    url: str = typer.Option(None, envvar="AIPT_TEST_EVENT_URL", help="Defaults to http://127.0.0.1:$PORT/webhooks/stripe"),
    api: str = typer.Option("current", help="Fixture set: current or legacy"),
) -> None:
    """Sign a real-shaped Stripe event with the configured secret and POST it to the endpoint."""

    async def main() -> None:
        s = common.load_settings(dev_env=(*common.DEV_URLS, "STRIPE_WEBHOOK_SECRET"))
        secret = (s.webhook_secrets or [DEV_SECRET])[0]
        try:
            event, body, header = signed_test_event(event_type, api, secret)
        except LookupError as exc:
            raise common.CommandError(str(exc)) from None
        target = url or f"http://127.0.0.1:{s.port}/webhooks/stripe"
        async with httpx.AsyncClient(timeout=10) as client:
            try:
                r = await client.post(target, content=body, headers={"Stripe-Signature": header, "Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                raise common.CommandError(f"cannot reach {target}: {exc}") from None
        common.console.print(f"{event['type']} {event['id']} → {r.status_code} {r.text}", highlight=False)
        if r.status_code != 200:
            raise typer.Exit(1)
        common.console.print(f"follow it with: aipt events show {event['id']}", highlight=False)

    common.run(main)
