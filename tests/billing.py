"""Helpers for event-processing tests: store events as ingest does, run the real job, read the result."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import asyncpg

from aipt import db, fixtures

USER = "ec647f7f-dd13-4089-a2f0-25eec0473a52"  # the current-api fixtures' user
LEGACY_CUSTOMER = "cus_IhGfebO16cMIGN"
DEMO_SQL = (Path(fixtures.__file__).parent / "demo.sql").read_text()


async def seed_catalogue(conn: asyncpg.Connection) -> None:
    """`aipt dev`'s demo catalogue: the neuron and the plans the fixtures name (not the legacy customer's mapping)."""
    await conn.execute(DEMO_SQL)


async def store(conn: asyncpg.Connection, event: dict) -> None:
    await conn.execute(
        db.queries["insert_event"],
        event["id"],
        event["type"],
        event.get("api_version"),
        event["created"],
        event.get("livemode", False),
        json.dumps(event),
        None,
    )


def variant(event: dict, created: int | None = None, **object_changes) -> dict:
    """A copy of an event with a new id (and optionally another created / object fields)."""
    e = copy.deepcopy(event)
    e["id"] = "evt_" + uuid.uuid4().hex[:24]
    if created is not None:
        e["created"] = created
    e["data"]["object"].update(object_changes)
    return e


async def status(conn: asyncpg.Connection, event_id: str) -> str:
    return await conn.fetchval("select status from public.stripe_events where id = $1", event_id)


async def billing_state(conn: asyncpg.Connection) -> dict:
    """Every billing row that matters, without timestamps of our own, for comparing end states."""
    return {
        "purchases": [
            dict(r)
            for r in await conn.fetch(
                """select user_id::text, neuron_id::text, bundle_id::text, payment_intent_id, checkout_session_id, amount, currency
               from public.user_purchases order by payment_intent_id, checkout_session_id"""
            )
        ],
        "subscriptions": [
            dict(r)
            for r in await conn.fetch(
                """select stripe_subscription_id, user_id::text, plan_tier, status, expires_at, cancel_at_period_end,
                      last_event_created, ended_at is not null as ended
               from public.user_subscriptions order by 1"""
            )
        ],
        "invoices": [
            dict(r)
            for r in await conn.fetch(
                """select id, subscription_id, customer_id, payment_intent_id, status, amount_due, amount_paid, currency,
                      attempt_count from public.invoices order by id"""
            )
        ],
        "customers": [
            dict(r)
            for r in await conn.fetch("select customer_id, user_id::text from public.stripe_customers order by 1")
        ],
    }
