"""Running the service: web, worker, and a signed test event like `stripe trigger`."""

from __future__ import annotations

from pathlib import Path

import typer

from aipt.cli import common

# Public (it is in this repository): only `aipt dev` and `aipt send-test-event` ever use it.
DEV_SECRET = "whsec_aipt_local_development"


def web(
    dev: bool = typer.Option(
        False, "--dev", hidden=True, help="Started by `aipt dev`: 127.0.0.1, the development secret allowed."
    ),
) -> None:
    """Serve the webhook endpoint (uvicorn, uvloop + httptools)."""

    def main() -> None:
        from aipt import runtime

        # Never from `aipt dev`'s file: a web started in that folder must not pick up its public secret.
        s = common.load_settings(dev_env=())
        s.require("database_url", "redis_url", "stripe_webhook_secret")
        if DEV_SECRET in s.webhook_secrets and not dev:
            raise common.CommandError(
                "STRIPE_WEBHOOK_SECRET holds the public development secret of `aipt dev`: anyone could sign "
                "events with it. Set the signing secret of your Stripe endpoint (whsec_..., in the dashboard)."
            )
        runtime.run_web(s, host="127.0.0.1" if dev else None)

    common.run(main)


def worker() -> None:
    """Apply events from the queue and run the scheduled jobs (sweeper, cleanups)."""

    def main() -> None:
        from aipt import runtime

        runtime.run_worker(common.load_settings(dev_env=()))

    common.run(main)


def _set(event: dict, assignment: str) -> None:
    """`path=value` into the event: the path from the event (data.object.customer) or from its object
    (customer, metadata.neuron_id); list items by index (items.data.0.price.id); the value as JSON when
    it parses (42, true, null, {"a": 1}), else as text."""
    import json

    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise typer.BadParameter(f"{assignment!r} is not path=value", param_hint="--set")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    keys = path.split(".")
    node = event if keys[0] in event else event["data"]["object"]
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise typer.BadParameter(
                    f"{path}: {key!r} is not an index of a list of {len(node)}", param_hint="--set"
                )
            key = int(key)
        if last:
            node[key] = value
            return
        if isinstance(node, dict) and node.get(key) is None:
            node[key] = {}  # a missing object is made, as stripe trigger --override does
        node = node[key]
        if not isinstance(node, (dict, list)):
            raise typer.BadParameter(
                f"{path}: {'.'.join(keys[: i + 1])} is {json.dumps(node)}, not an object", param_hint="--set"
            )


def test_event(
    event_type: str | None, api: str | None, payload: Path | None, overrides: list[str]
) -> tuple[dict, list[str]]:
    """The event to send: a shipped fixture (a fresh id and time, demo gaps filled) or the payload file,
    with the --set overrides applied last. Returns it and what was filled."""
    import json
    import time
    import uuid

    from aipt import fixtures

    filled: list[str] = []
    if payload is not None:
        try:
            event = json.loads(payload.read_text())
        except (OSError, ValueError) as exc:
            raise common.CommandError(f"cannot read {payload}: {exc}") from None
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            raise common.CommandError(f"{payload} is not a Stripe event (an object with data.object)")
        event.setdefault("id", "evt_test_" + uuid.uuid4().hex[:24])
        event.setdefault("created", int(time.time()))
    else:
        try:
            event = json.loads(fixtures.find(event_type, api).read_text())
        except LookupError as exc:
            raise common.CommandError(str(exc)) from None
        event["id"] = "evt_test_" + uuid.uuid4().hex[:24]
        event["created"] = int(time.time())
        filled = fixtures.for_demo(event)
    for assignment in overrides:
        _set(event, assignment)
    return event, filled


def _list_fixtures(as_json: bool) -> None:
    from aipt import fixtures

    common.emit(fixtures.catalogue(), as_json, title="aipt send-test-event TYPE [--api current|legacy]")


def send_test_event(
    event_type: str = typer.Argument(
        None, metavar="[TYPE]", help="An event type, e.g. checkout.session.completed (see --list)."
    ),
    list_: bool = typer.Option(False, "--list", help="List the shipped fixtures (both API shapes) and exit."),
    api: str = typer.Option(
        None, "--api", metavar="current|legacy", help="Which fixture set (default: current, else legacy)."
    ),
    overrides: list[str] = typer.Option(
        None,
        "--set",
        metavar="PATH=VALUE",
        help="Override a field, like `stripe trigger --override` (repeatable): "
        "data.object.customer=cus_X, or from the object: metadata.neuron_id=...",
    ),
    payload: Path = typer.Option(None, "--payload", metavar="FILE", help="Send this event JSON instead of a fixture."),
    url: str = typer.Option(
        None, envvar="AIPT_TEST_EVENT_URL", metavar="URL", help="Defaults to http://127.0.0.1:$PORT/webhooks/stripe"
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait until the worker has applied it and print the outcome."),
    timeout: float = typer.Option(30.0, "--timeout", metavar="SECONDS", help="How long --wait waits."),
    as_json: bool = typer.Option(False, "--json", help="With --list: JSON."),
) -> None:
    """Sign a real-shaped Stripe event with the configured secret and POST it to the endpoint."""
    if list_:
        _list_fixtures(as_json)
        return
    if (event_type is None) == (payload is None):
        raise typer.BadParameter("name an event type (see --list), or give --payload FILE (not both)")

    async def main() -> None:
        import json

        import httpx
        import stripe

        s = common.load_settings(dev_env=(*common.DEV_URLS, "STRIPE_WEBHOOK_SECRET"))
        secret = (s.webhook_secrets or [DEV_SECRET])[0]
        event, filled = test_event(event_type, api, payload, overrides or [])
        for note in filled:
            common.console.print(f"filled {note}", highlight=False)
        body = json.dumps(event)
        header = stripe.WebhookSignature.generate_signature_header(body, secret)
        target = url or f"http://127.0.0.1:{s.port}/webhooks/stripe"
        async with httpx.AsyncClient(timeout=10) as client:
            try:
                r = await client.post(
                    target, content=body, headers={"Stripe-Signature": header, "Content-Type": "application/json"}
                )
            except httpx.HTTPError as exc:
                hint = " (is `aipt dev` or `aipt web` running?)" if url is None else ""
                raise common.CommandError(f"cannot reach {target}: {exc or type(exc).__name__}{hint}") from None
        common.console.print(f"{event['type']} {event['id']} → {r.status_code} {r.text}", highlight=False)
        if r.status_code != 200:
            raise typer.Exit(1)
        if not wait:
            common.console.print(f"follow it with: aipt events show {event['id']}", highlight=False)
            return
        await _wait_applied(event["id"], timeout)

    common.run(main)


async def _wait_applied(event_id: str, timeout: float) -> None:
    from aipt import operations

    outcome: list[operations.Progress] = []
    async with common.connection() as conn:
        late = await operations.wait(conn, {event_id: 1}, timeout, outcome.append)
    if late:
        raise common.CommandError(f"{event_id} not applied after {timeout:g} s (is a worker running? aipt status)")
    common.console.print(outcome[0].describe(), highlight=False)
    if outcome[0].status not in ("ok", "skipped"):
        raise typer.Exit(1)
