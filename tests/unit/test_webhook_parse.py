"""Unit tests of what ingest accepts: signatures (several secrets, tolerance) and event bodies."""

import json
import time

import pytest

from aipt import fixtures
from ingest import webhook
from tests.servers import OTHER_SECRET, SECRET, sign

BODY = json.dumps(fixtures.load("checkout.session.completed"))


def test_any_configured_secret_verifies():
    assert webhook.verify(BODY.encode(), sign(BODY, OTHER_SECRET), [SECRET, OTHER_SECRET], 300) == BODY


@pytest.mark.parametrize(
    ("header", "secrets", "message"),
    [
        (None, [SECRET], "missing Stripe-Signature"),
        ("", [SECRET], "missing Stripe-Signature"),
        ("garbage", [SECRET], "malformed Stripe-Signature"),
        (sign(BODY, "whsec_someone_else"), [SECRET, OTHER_SECRET], "no valid signature"),
        (sign(BODY, SECRET, timestamp=int(time.time()) - 301), [SECRET], "tolerance"),
        (sign(BODY + " ", SECRET), [SECRET], "no valid signature"),
    ],
)
def test_bad_signatures_are_rejected(header, secrets, message):
    with pytest.raises(webhook.Rejected, match=message):
        webhook.verify(BODY.encode(), header, secrets, 300)


def test_non_utf8_body_is_rejected():
    with pytest.raises(webhook.Rejected, match="UTF-8"):
        webhook.verify(b"\xff\xfe", "t=1,v1=00", [SECRET], 300)


def test_snapshot_event_parses():
    event = webhook.parse(BODY)
    assert (event.id, event.type, event.created) == (
        "evt_1uHbJxB7WZ01zgkW26X24teA",
        "checkout.session.completed",
        1788000001,
    )
    assert event.api_version == "2026-07-29.dahlia" and event.body == BODY


THIN = {
    "id": "evt_test_65R9Ijk8",
    "object": "v2.core.event",
    "type": "v1.billing.meter.error_report_triggered",
    "created": "2024-09-17T06:20:52.246Z",
    "related_object": {"id": "mtr_123", "type": "billing.meter", "url": "/v1/billing/meters/mtr_123"},
}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"hello": "world"}), "not a Stripe event"),
        (json.dumps(THIN), "thin"),
        (json.dumps({"object": "event", "id": "x", "type": "a", "created": 1, "data": {"object": {}}}), "evt_ id"),
        (json.dumps({"object": "event", "id": "evt_1", "created": 1, "data": {"object": {}}}), "no type"),
        (
            json.dumps({"object": "event", "id": "evt_1", "type": "a", "created": "1", "data": {"object": {}}}),
            "created",
        ),
        (json.dumps({"object": "event", "id": "evt_1", "type": "a", "created": 1, "data": {}}), "data.object"),
    ],
)
def test_bodies_that_are_not_snapshot_events_are_rejected(body, message):
    with pytest.raises(webhook.Rejected, match=message):
        webhook.parse(body)
