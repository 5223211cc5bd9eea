"""What makes a request a Stripe event we accept: a valid signature and a snapshot event body.

Only the HMAC is checked (stripe.WebhookSignature.verify_header); the raw bytes are stored as they
came, so no Stripe object tree is built on the hot path.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import stripe

# Stripe's ids are ~30 characters; a longer one is not Stripe's (and would not fit an index key well).
MAX_ID_LENGTH = 255
# Stripe's events nest about 8 levels; past this a body is not an event (and deep enough to exhaust a parser).
MAX_JSON_DEPTH = 64


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
    # verify_header refuses a timestamp too far in the past; one too far in the future is refused here.
    stamp = next((item[2:] for item in header.split(",") if item.startswith("t=")), None)
    if stamp is not None and stamp.isdigit() and int(stamp) > time.time() + tolerance:
        raise Rejected(f"timestamp outside the tolerance zone ({tolerance} s): in the future")
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
    except RecursionError:
        raise Rejected(f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(doc, dict):
        raise Rejected("body is not a JSON object")
    if _deeper_than(doc, MAX_JSON_DEPTH):
        raise Rejected(f"body nests deeper than {MAX_JSON_DEPTH} levels")
    kind = doc.get("object")
    if isinstance(kind, str) and kind.startswith("v2.") or "related_object" in doc:
        raise Rejected("thin (v2) events are not accepted: send snapshot events to this endpoint")
    if kind != "event":
        raise Rejected('body is not a Stripe event (object is not "event")')
    event_id, event_type, created = doc.get("id"), doc.get("type"), doc.get("created")
    if not isinstance(event_id, str) or not event_id.startswith("evt_"):
        raise Rejected("event has no evt_ id")
    if len(event_id) > MAX_ID_LENGTH:
        raise Rejected(f"event id longer than {MAX_ID_LENGTH} characters")
    if not isinstance(event_type, str) or not event_type:
        raise Rejected("event has no type")
    if len(event_type) > MAX_ID_LENGTH:
        raise Rejected(f"event type longer than {MAX_ID_LENGTH} characters")
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


def _deeper_than(doc: object, limit: int) -> bool:
    """Whether any value in doc sits more than `limit` containers deep (iterative: no recursion to exhaust)."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
