"""Pieces of the CLI that need no server: `--set` overrides, fixture names, JSON and table cells, outcomes."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest
import typer

from aipt import fixtures


def test_set_reaches_into_the_event_or_its_object_and_reads_json_values():
    from aipt.cli.service import _set

    event = fixtures.load("customer.subscription.created")
    _set(event, "customer=cus_New1")  # from the object
    _set(event, "data.object.metadata.kind=neuron")  # from the event
    _set(event, "items.data.0.price.id=price_X")  # into a list
    _set(event, "cancel_at_period_end=true")
    _set(event, 'metadata.note={"a": [1, 2]}')
    _set(event, "livemode=false")  # a top-level key of the event itself
    obj = event["data"]["object"]
    assert (obj["customer"], obj["metadata"]["kind"], obj["items"]["data"][0]["price"]["id"]) == (
        "cus_New1",
        "neuron",
        "price_X",
    )
    assert (
        obj["cancel_at_period_end"] is True and obj["metadata"]["note"] == {"a": [1, 2]} and event["livemode"] is False
    )
    for bad in ("novalue", "=x", "items.data.7.price=x", "customer.id.deeper=x"):
        with pytest.raises(typer.BadParameter):
            _set(event, bad)


def test_fixtures_are_found_by_event_type_in_both_sets_and_by_legacy_file_name():
    assert fixtures.find("invoice.payment_failed").parent.name == "current-api"
    assert fixtures.find("invoice.payment_failed", "legacy").name == "event_invoice_payment_failed.json"
    assert fixtures.find("invoice.paid").name == "invoice_paid.json"  # only the legacy set has it
    assert fixtures.find("subscription_created", "legacy").name == "subscription_created.json"
    assert len(fixtures.catalogue()) == 15
    with pytest.raises(LookupError, match="known: .*invoice.payment_failed"):
        fixtures.find("charge.refunded")
    with pytest.raises(LookupError, match="no fixture set 'beta'"):
        fixtures.find("invoice.paid", "beta")


def test_a_checkout_naming_no_product_of_this_shop_buys_the_demo_neuron_and_says_so():
    legacy = fixtures.load("checkout.session.completed", "legacy")
    assert fixtures.for_demo(legacy) == [f"data.object.metadata.neuron_id={fixtures.DEMO_NEURON} (the demo neuron)"]
    assert legacy["data"]["object"]["metadata"] == {"neuron_id": fixtures.DEMO_NEURON}
    current = fixtures.load("checkout.session.completed")
    before = dict(current["data"]["object"]["metadata"])
    assert fixtures.for_demo(current) == [] and current["data"]["object"]["metadata"] == before


def test_values_print_as_json_has_them_and_cells_as_people_read_them():
    from aipt.cli.common import _cell, plain

    u = uuid.UUID("17ea841a-9ee1-4f9e-87e6-a1f2dbc1edd3")
    at = dt.datetime(2026, 11, 29, 10, tzinfo=dt.UTC)
    assert plain({"a": [u, at], "n": decimal.Decimal("1.5"), "d": dt.timedelta(seconds=90)}) == {
        "a": [str(u), "2026-11-29T10:00:00+00:00"],
        "n": 1.5,
        "d": 90.0,
    }
    assert (_cell(["holder", "other"]), _cell(None), _cell(dt.timedelta(seconds=245))) == ("holder, other", "", "4m05s")


def test_an_outcome_reads_as_a_sentence():
    from aipt.operations import Progress

    at = dt.datetime(2026, 11, 29, 10, 30, 5)
    assert Progress("evt_1", "ok", 0).describe() == "evt_1: ok"
    assert Progress("evt_1", "dead", 3, None, "boom").describe() == "evt_1: dead after attempt 3: boom"
    assert (
        Progress("evt_1", "retrying", 1, at, "boom").describe()
        == "evt_1: failed (attempt 1), retrying at 10:30:05: boom"
    )
