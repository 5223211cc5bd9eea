"""What makes a request a Stripe event we accept: a valid signature and a snapshot event body.

Only the HMAC is checked (stripe.WebhookSignature.verify_header); the raw bytes are stored as they
came, so no Stripe object tree is built on the hot path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import stripe


class Rejected(Exception):
    """The request is not an event we accept; nothing is stored. The message goes back to Stripe."""


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    api_version: str | None
    created: int
    livemode: bool
    body: str


def verify(body: bytes, header: str | None, secrets: list[str], tolerance: int) -> str:
    """Return the body as text once one of the secrets signed it within the tolerance."""
    if not header:
        raise Rejected("missing Stripe-Signature header")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("body is not UTF-8 text") from None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
            return text
        except stripe.SignatureVerificationError as exc:
            # verify_header checks the timestamp only after a signature matched this secret.
            if "tolerance" in str(exc):
                raise Rejected(f"timestamp outside the tolerance zone ({tolerance} s): stale or replayed") from None
            if "extract timestamp" in str(exc) or "expected scheme" in str(exc):
                raise Rejected(f"malformed Stripe-Signature header: {exc.user_message}") from None
    raise Rejected("no valid signature for any configured webhook secret")


def parse(text: str) -> Event:
    """A snapshot event envelope, or Rejected saying what is wrong with it."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise Rejected("body is not JSON") from None
    if not isinstance(doc, dict):
        raise Rejected("body is not a JSON object")
    kind = doc.get("object")
    if isinstance(kind, str) and kind.startswith("v2.") or "related_object" in doc:
        raise Rejected("thin (v2) events are not accepted: send snapshot events to this endpoint")
    if kind != "event":
        raise Rejected('body is not a Stripe event (object is not "event")')
    event_id, event_type, created = doc.get("id"), doc.get("type"), doc.get("created")
    if not isinstance(event_id, str) or not event_id.startswith("evt_"):
        raise Rejected("event has no evt_ id")
    if not isinstance(event_type, str) or not event_type:
        raise Rejected("event has no type")
    if not isinstance(created, int) or isinstance(created, bool):
        raise Rejected("event has no integer created")
    data = doc.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise Rejected("event has no data.object")
    api_version = doc.get("api_version")
    return Event(
        id=event_id,
        type=event_type,
        api_version=api_version if isinstance(api_version, str) else None,
        created=created,
        livemode=bool(doc.get("livemode", False)),
        body=text,
    )
