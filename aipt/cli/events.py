"""Operators' view of Stripe events and the dead-letter queue."""

from __future__ import annotations

import json
import re

import asyncpg
import typer
from rich.progress import Progress

from aipt import db, queue
from aipt.cli import common

events_app = typer.Typer(no_args_is_help=True, help="Every stored Stripe event.")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead events: list, inspect, requeue.")

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(duration: str | None) -> float | None:
    """'90s', '15m', '2h', '7d', '1w' → seconds."""
    if duration is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", duration)
    if not match:
        raise typer.BadParameter(f"{duration!r} is not a duration like 90s, 15m, 2h, 7d")
    return float(match.group(1)) * UNITS[match.group(2)]


def _age(row: dict) -> dict:
    if row.get("age") is not None:
        row["age"] = str(row["age"]).split(".")[0]
    return row


@events_app.command("list")
def events_list(
    status: str = typer.Option(None, help="pending, ok, error or skipped"),
    type_: str = typer.Option(None, "--type", help="Stripe event type"),
    since: str = typer.Option(None, help="Received within this long, e.g. 2h"),
    limit: int = typer.Option(50),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recent events, newest first."""

    async def main() -> None:
        async with common.connection() as conn:
            rows = await conn.fetch(db.queries["list_events"], status, type_, seconds(since), limit)
        common.emit((_age(dict(r)) for r in rows), as_json, title="Stripe events")

    common.run(main)


async def _show(event_id: str, as_json: bool) -> None:
    async with common.connection() as conn:
        row = await conn.fetchrow(db.queries["show_event"], event_id)
    if row is None:
        raise common.CommandError(f"no event {event_id}")
    record = dict(row)
    for key in ("payload", "history"):
        if record[key] is not None:
            record[key] = json.loads(record[key])
    if as_json:
        common.emit([record], True)
        return
    payload, history = record.pop("payload"), record.pop("history") or []
    common.emit([{"field": k, "value": v} for k, v in record.items()], False, title=event_id)
    if history:
        common.emit(history, False, title="attempts")
    common.console.print_json(data=payload)


@events_app.command("show")
def events_show(event_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One event: status, payload, and every failed attempt."""
    common.run(lambda: _show(event_id, as_json))


@dlq_app.command("list")
def dlq_list(
    type_: str = typer.Option(None, "--type", help="Stripe event type"),
    since: str = typer.Option(None, help="Died within this long, e.g. 24h"),
    limit: int = typer.Option(100),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Dead events: id, type, attempts, last error, age."""

    async def main() -> None:
        async with common.connection() as conn:
            rows = await conn.fetch(db.queries["list_dead"], type_, seconds(since), limit)
        common.emit((_age(dict(r)) for r in rows), as_json, title="Dead Stripe events")

    common.run(main)


@dlq_app.command("show")
def dlq_show(event_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """A dead event's payload and every attempt's error."""
    common.run(lambda: _show(event_id, as_json))


async def requeue(conn: asyncpg.Connection, redis, event_id: str) -> int:
    """Make the event due now (Postgres), then ring (Redis; the sweeper covers a failed ring)."""
    try:
        attempt = await conn.fetchval(db.queries["requeue_event"], event_id)
    except asyncpg.PostgresError as exc:
        raise common.CommandError(str(exc)) from None
    try:
        await queue.enqueue_event(redis, event_id, attempt)
    except Exception as exc:  # noqa: BLE001 - the sweeper enqueues due retries
        common.err_console.print(f"warning: {event_id} is due but not enqueued ({exc}); the sweeper will pick it up")
    return attempt


@dlq_app.command("requeue")
def dlq_requeue(
    event_ids: list[str] = typer.Argument(None, help="Event ids to requeue"),
    all_: bool = typer.Option(False, "--all", help="Every dead event (with --type / --since filters)"),
    type_: str = typer.Option(None, "--type"),
    since: str = typer.Option(None, help="Died within this long, e.g. 24h"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be requeued"),
) -> None:
    """Give dead events one more attempt now; their history is kept."""
    if bool(event_ids) == all_:
        raise typer.BadParameter("name event ids, or use --all (not both)")

    async def main() -> None:
        s = common.load_settings()
        async with common.connection() as conn:
            if all_:
                rows = await conn.fetch(db.queries["list_dead"], type_, seconds(since), 1_000_000)
                ids = [r["event_id"] for r in rows]
            else:
                ids = list(event_ids)
            if dry_run:
                common.console.print(f"would requeue {len(ids)} event(s)" + (": " + " ".join(ids) if ids else ""))
                return
            redis = queue.connect(s)
            failed = []
            try:
                with Progress(console=common.err_console, disable=len(ids) < 20) as progress:
                    task = progress.add_task("requeueing", total=len(ids))
                    for event_id in ids:
                        try:
                            attempt = await requeue(conn, redis, event_id)
                            common.console.print(f"requeued {event_id} (attempt {attempt})", highlight=False)
                        except common.CommandError as exc:
                            failed.append(f"{event_id}: {exc}")
                        progress.advance(task)
            finally:
                await queue.close(redis)
        for line in failed:
            common.err_console.print(f"[red]not requeued[/red] {line}", highlight=False)
        if failed:
            raise typer.Exit(1)

    common.run(main)
