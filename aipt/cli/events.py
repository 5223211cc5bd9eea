"""Operators' view of Stripe events and the dead-letter queue, and what they do to them.

The actions (requeue, retry, replay, discard) are aipt.operations: one admin-only SQL function each,
which records who did it in the event's history.
"""

from __future__ import annotations

import re
from enum import Enum

import typer

from aipt.cli import common

events_app = typer.Typer(no_args_is_help=True, help="Every stored Stripe event: list, show, replay.")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead events: list, show, requeue, retry, discard.")

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# aipt.operations.STATES, written out so that `--help` does not import it (a test keeps them equal).
State = Enum("State", {s: s for s in ("pending", "ok", "skipped", "retrying", "dead", "discarded")}, type=str)
STATES = tuple(s.value for s in State)

JSON = typer.Option(False, "--json", help="Print JSON (a list of objects; `show`: one object).")
TYPE = typer.Option(None, "--type", metavar="TYPE", help="Only this Stripe event type, e.g. invoice.payment_failed.")
WAIT = typer.Option(False, "--wait", help="Wait for the worker and print each outcome (exit 1 if any failed).")
TIMEOUT = typer.Option(60.0, "--timeout", metavar="SECONDS", help="How long --wait waits.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask before acting on --all.")


DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")


def seconds(duration: str | None) -> float | None:
    """'90s', '15m', '2h', '7d', '1w' → seconds."""
    if duration is None:
        return None
    match = DURATION.fullmatch(duration)
    if not match:
        raise typer.BadParameter(f"{duration!r} is not a duration like 90s, 15m, 2h, 7d")
    return float(match.group(1)) * UNITS[match.group(2)]


def moment(value: str | None):
    """A duration ago ('2h') or a time ('2026-11-29', '2026-11-29T10:00', UTC unless it says) → datetime."""
    import datetime as dt

    if value is None:
        return None
    if DURATION.fullmatch(value):
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds(value))
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither a duration (2h, 7d) nor a time (2026-11-29T10:00)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _cursor(row: dict) -> str:
    return f"{row['received_at'].isoformat()}~{row['event_id']}"


def _parse_cursor(value: str | None):
    import datetime as dt

    if value is None:
        return None, None
    at, sep, event_id = value.partition("~")
    try:
        if not sep or not event_id:
            raise ValueError
        return dt.datetime.fromisoformat(at), event_id
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a cursor (the `cursor` of a row `events list` printed)") from None


@events_app.command("list")
def events_list(
    status: State = typer.Option(
        None, "--status", metavar="STATE", help="What the event is now: " + ", ".join(STATES) + "."
    ),
    type_: str = TYPE,
    customer: str = typer.Option(None, "--customer", metavar="CUS", help="Events about this Stripe customer."),
    user: str = typer.Option(
        None, "--user", metavar="UUID", help="Events about this user (by their customers or the object's metadata)."
    ),
    object_id: str = typer.Option(
        None, "--object", metavar="ID", help="Events whose object is or names this Stripe id (pi_, sub_, in_, cs_...)."
    ),
    since: str = typer.Option(
        None, "--since", metavar="WHEN", help="Received at or after: a duration ago (2h, 7d) or a time."
    ),
    until: str = typer.Option(None, "--until", metavar="WHEN", help="Received before: a duration ago or a time."),
    after: str = typer.Option(None, "--after", metavar="CURSOR", help="The next page: rows older than this cursor."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=10_000, metavar="N", help="Rows per page."),
    as_json: bool = JSON,
) -> None:
    """Events, newest first, with what each is now: pending, ok, skipped, retrying, dead or discarded."""
    import uuid

    if user is not None:
        try:
            user = str(uuid.UUID(user))
        except ValueError:
            raise typer.BadParameter(f"{user!r} is not a user id (a uuid)", param_hint="--user") from None
    cursor_at, cursor_id = _parse_cursor(after)
    args = (
        status and status.value,
        type_,
        moment(since),
        moment(until),
        customer,
        user,
        object_id,
        cursor_at,
        cursor_id,
        limit,
    )

    async def main() -> list[dict]:
        from aipt import db

        async with common.connection() as conn:
            return [dict(r) for r in await conn.fetch(db.queries["list_events"], *args)]

    rows = common.run(main)
    for row in rows:
        row["cursor"] = _cursor(row)
    if as_json:
        common.print_json(rows)
        return
    common.emit(
        ({k: v for k, v in r.items() if k not in ("cursor", "received_at")} for r in rows),
        False,
        title="Stripe events",
        empty="(no event matches)",
    )
    if len(rows) == limit:
        common.err_console.print(f"more: aipt events list ... --after '{rows[-1]['cursor']}'", highlight=False)


async def _record(event_id: str) -> dict:
    import json

    from aipt import db

    async with common.connection() as conn:
        row = await conn.fetchrow(db.queries["show_event"], event_id)
    if row is None:
        raise common.CommandError(f"no event {event_id} (aipt events list shows what there is)")
    record = dict(row)
    for key in ("payload", "history", "actions"):
        record[key] = json.loads(record[key]) if record[key] is not None else None
    record["history"] = record["history"] or []
    return record


def _show(event_id: str, as_json: bool) -> None:
    record = common.run(lambda: _record(event_id))
    if as_json:
        common.print_json(record)
        return
    payload, history, actions = record.pop("payload"), record.pop("history"), record.pop("actions")
    common.emit(({"field": k, "value": v} for k, v in record.items() if v is not None), False, title=event_id)
    if history:
        common.emit(history, False, title="failed attempts")
    if actions:
        common.emit(({**a, "detail": a["detail"] or ""} for a in actions), False, title="operators' actions")
    if payload is not None:
        common.console.print_json(data=payload)


@events_app.command("show")
def events_show(event_id: str = typer.Argument(..., metavar="EVENT_ID"), as_json: bool = JSON) -> None:
    """One event: what it is now, its payload, every failed attempt and every operator's action."""
    _show(event_id, as_json)


@dlq_app.command("show")
def dlq_show(event_id: str = typer.Argument(..., metavar="EVENT_ID"), as_json: bool = JSON) -> None:
    """A dead event: its payload, every attempt's error and every operator's action."""
    _show(event_id, as_json)


@dlq_app.command("list")
def dlq_list(
    type_: str = TYPE,
    since: str = typer.Option(
        None, "--since", metavar="WHEN", help="Died at or after: a duration ago (24h) or a time."
    ),
    limit: int = typer.Option(100, "--limit", "-n", min=1, metavar="N"),
    as_json: bool = JSON,
) -> None:
    """Dead events, oldest death first: attempts, last error, how long dead."""

    async def main() -> list:
        from aipt import db

        async with common.connection() as conn:
            return await conn.fetch(db.queries["list_dead"], type_, moment(since), limit)

    common.emit(common.run(main), as_json, title="Dead Stripe events", empty="(no dead event)")


# -- acting on events -----------------------------------------------------------------------------


def _act(
    verb: str,
    ids: list[str],
    all_query: str | None,
    filters: tuple,
    action,
    *,
    wait: bool,
    timeout: float,
    yes: bool,
    dry_run: bool = False,
    describe_all: str = "",
) -> None:
    """Run one action on named events or on every one a listing query finds; report each, then (--wait)
    each outcome. Exit 1 when any was refused, failed again or did not finish in time."""
    from aipt import operations

    by = operations.operator()

    async def main() -> None:
        from aipt import db

        async with common.connection() as conn:
            if all_query:
                targets = [r["event_id"] for r in await conn.fetch(db.queries[all_query], *filters, 1_000_000)]
                if not targets:
                    common.console.print(f"no {describe_all}: nothing to {verb}", highlight=False)
                    return
            else:
                targets = list(dict.fromkeys(ids))
            if dry_run:
                common.console.print(f"would {verb} {len(targets)} event(s): " + " ".join(targets), highlight=False)
                return
            if all_query:
                common.confirm(f"{verb} {len(targets)} {describe_all}?", yes)
            started, refused = await _run_each(conn, verb, targets, action, by)
            failed = await _wait(conn, started, timeout) if wait and started else []
        if refused or failed:
            raise typer.Exit(1)

    common.run(main)


async def _run_each(conn, verb: str, targets: list[str], action, by: str) -> tuple[dict[str, int], list[str]]:
    from rich.progress import Progress

    from aipt import operations

    started: dict[str, int] = {}
    refused: list[str] = []

    def warn(line: str) -> None:
        common.err_console.print(
            f"[yellow]warning:[/yellow] {line}{common.not_running_hint('REDIS_URL')}", highlight=False
        )

    async with common.redis_client() as redis:
        with Progress(console=common.err_console, transient=True, disable=len(targets) < 10) as bar:
            task = bar.add_task(verb, total=len(targets))
            for event_id in targets:
                try:
                    result = await action(conn, redis, event_id, by, warn)
                except operations.OperationError as exc:
                    refused.append(event_id)
                    common.err_console.print(f"[red]not {_past(verb)}[/red] {event_id}: {exc}", highlight=False)
                else:
                    if isinstance(result, int):
                        started[event_id] = result
                        common.console.print(f"{_past(verb)} {event_id} (attempt {result})", highlight=False)
                    else:
                        common.console.print(f"{_past(verb)} {event_id}", highlight=False)
                bar.advance(task)
    return started, refused


def _past(verb: str) -> str:
    return {"requeue": "requeued", "retry": "retried", "replay": "replayed", "discard": "discarded"}[verb]


async def _wait(conn, started: dict[str, int], timeout: float) -> list[str]:
    """Print each event's outcome as it comes; the ids that failed again or did not finish in time."""
    from rich.progress import Progress

    from aipt import operations

    failed: list[str] = []
    with Progress(console=common.err_console, transient=True, disable=len(started) < 10) as bar:
        task = bar.add_task("waiting", total=len(started))

        def settled(p: operations.Progress) -> None:
            if p.status not in ("ok", "skipped"):
                failed.append(p.event_id)
            common.console.print(p.describe(), highlight=False)
            bar.advance(task)

        late = await operations.wait(conn, started, timeout, settled)
    for event_id in late:
        common.err_console.print(
            f"[yellow]{event_id}: not finished after {timeout:g} s[/yellow] "
            f"(is a worker running? `aipt status`; follow it: aipt events show {event_id})",
            highlight=False,
        )
    return failed + late


def _ids_or_all(ids: list[str] | None, all_: bool) -> None:
    if bool(ids) == all_:
        raise typer.BadParameter("name event ids, or use --all (not both)")


@dlq_app.command("requeue")
def dlq_requeue(
    event_ids: list[str] = typer.Argument(None, metavar="EVENT_ID", help="Dead events to requeue."),
    all_: bool = typer.Option(False, "--all", help="Every dead event (narrowed by --type / --since)."),
    type_: str = TYPE,
    since: str = typer.Option(None, "--since", metavar="WHEN", help="With --all: died at or after (24h, or a time)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be requeued; change nothing."),
    wait: bool = WAIT,
    timeout: float = TIMEOUT,
    yes: bool = YES,
) -> None:
    """Give dead events one more attempt now (after fixing the cause); their history is kept."""
    from aipt import operations

    _ids_or_all(event_ids, all_)
    _act(
        "requeue",
        event_ids,
        "list_dead" if all_ else None,
        (type_, moment(since)),
        operations.requeue,
        wait=wait,
        timeout=timeout,
        yes=yes,
        dry_run=dry_run,
        describe_all=_dead_words(type_, since),
    )


@dlq_app.command("retry")
def dlq_retry(
    event_ids: list[str] = typer.Argument(None, metavar="EVENT_ID", help="Retrying events to run now."),
    all_: bool = typer.Option(False, "--all", help="Every event waiting for a retry (narrowed by --type / --since)."),
    type_: str = TYPE,
    since: str = typer.Option(None, "--since", metavar="WHEN", help="With --all: first failed at or after."),
    wait: bool = WAIT,
    timeout: float = TIMEOUT,
    yes: bool = YES,
) -> None:
    """Run the next attempt of events waiting in backoff now, instead of at their retry time."""
    from aipt import operations

    _ids_or_all(event_ids, all_)
    words = (
        "retrying event(s)" + (f" of type {type_}" if type_ else "") + (f" first failed since {since}" if since else "")
    )
    _act(
        "retry",
        event_ids,
        "list_retrying" if all_ else None,
        (type_, moment(since)),
        operations.retry,
        wait=wait,
        timeout=timeout,
        yes=yes,
        describe_all=words,
    )


@dlq_app.command("discard")
def dlq_discard(
    event_ids: list[str] = typer.Argument(None, metavar="EVENT_ID", help="Events to resolve without applying."),
    reason: str = typer.Option(
        ..., "--reason", "-r", metavar="TEXT", help="Why (required): kept in the event's history."
    ),
    all_: bool = typer.Option(False, "--all", help="Every dead event (narrowed by --type / --since)."),
    type_: str = TYPE,
    since: str = typer.Option(None, "--since", metavar="WHEN", help="With --all: died at or after."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be discarded; change nothing."),
    yes: bool = YES,
) -> None:
    """Resolve events that will never (or must not) succeed: not applied, recorded with who and why,
    and no longer needing attention. Named events may be dead, retrying or pending."""
    from aipt import operations

    _ids_or_all(event_ids, all_)
    if not reason.strip():
        raise typer.BadParameter("say why", param_hint="--reason")

    async def discard(conn, _redis, event_id, by, _warn):
        return await operations.discard(conn, event_id, reason, by)

    _act(
        "discard",
        event_ids,
        "list_dead" if all_ else None,
        (type_, moment(since)),
        discard,
        wait=False,
        timeout=0,
        yes=yes,
        dry_run=dry_run,
        describe_all=_dead_words(type_, since),
    )


def _dead_words(type_: str | None, since: str | None) -> str:
    return "dead event(s)" + (f" of type {type_}" if type_ else "") + (f" that died since {since}" if since else "")


@events_app.command("replay")
def events_replay(
    event_ids: list[str] = typer.Argument(..., metavar="EVENT_ID", help="Applied (or skipped) events."),
    wait: bool = WAIT,
    timeout: float = TIMEOUT,
) -> None:
    """Apply events once more from their payload, like `stripe events resend` (idempotent; recorded)."""
    from aipt import operations

    _act("replay", event_ids, None, (), operations.replay, wait=wait, timeout=timeout, yes=True)
