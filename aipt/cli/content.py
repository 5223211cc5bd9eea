"""`aipt content`: the delete guard, soft delete, restore, hard delete and history of neurons and bundles.

Every state change is one call of the SQL function the web app and psql use too
(schema/23_neuron_delete_guard.sql); the database enforces who may do what, the guard and the
90 days, and records the change in the audit trail. Each command takes `[neuron|bundle] ID`: without
the kind, the ID says which it is.
"""

from __future__ import annotations

import typer

from aipt.cli import common

app = typer.Typer(no_args_is_help=True, help="Delete guard, soft delete, restore, hard delete and history of content.")

KINDS = ("neuron", "bundle")
TARGET = typer.Argument(..., metavar="[neuron|bundle] ID", help="The content's id, optionally after its kind.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def parse_target(words: list[str]):
    """`ID` or `KIND ID` -> (kind or None, id)."""
    import uuid

    if len(words) == 1:
        kind, raw = None, words[0]
    elif len(words) == 2:
        kind, raw = words
        if kind not in KINDS:
            raise common.CommandError(f"kind must be neuron or bundle, not {kind!r}")
    else:
        raise common.CommandError("expected [neuron|bundle] ID")
    try:
        return kind, uuid.UUID(raw)
    except ValueError:
        raise common.CommandError(f"not a valid id: {raw!r}") from None


async def resolve(conn, words: list[str]):
    """The kind and id a command acts on; the kind looked up when not given."""
    from aipt import db

    kind, content_id = parse_target(words)
    if kind is None:
        kind = await conn.fetchval(db.queries["content_kind"], content_id)
        if kind is None:
            raise common.CommandError(f"no neuron or bundle has id {content_id}")
    return kind, content_id


def change(words: list[str], queries: dict[str, str], *args, done: str, unchanged: str) -> None:
    """Run one state-changing function (`queries`: its query name by kind) and say what happened; a refusal
    is an error (exit 1)."""

    async def main() -> None:
        from aipt import db

        async with common.connection() as conn:
            kind, content_id = await resolve(conn, words)
            changed = await conn.fetchval(db.queries[queries[kind]], content_id, *args)
        message = done if changed else unchanged
        common.console.print(message.format(kind=kind, id=content_id), highlight=False, soft_wrap=True)

    common.run(main)


@app.command()
def guard(target: list[str] = TARGET, as_json: bool = JSON) -> None:
    """Whether the content can be deleted now, and what depends on it (live bundles, subscriptions, purchases)."""

    async def main() -> None:
        from aipt import db

        async with common.connection() as conn:
            kind, content_id = await resolve(conn, target)
            guard = {"neuron": db.queries["content_guard_neuron"], "bundle": db.queries["content_guard_bundle"]}[kind]
            row = await conn.fetchrow(guard, content_id)
        record = {"kind": kind, "id": str(content_id), **row}
        if as_json:
            common.print_json(record)  # one thing: one object
        else:
            common.emit([record], False, title="delete guard")

    common.run(main)


@app.command("soft-delete")
def soft_delete(
    target: list[str] = TARGET,
    reason: str = typer.Option(None, "--reason", "-r", help="Why, for the audit trail."),
) -> None:
    """Hide the content (and take its bundle links down) if the guard allows; restorable for 90 days."""
    change(
        target, {"neuron": "content_soft_delete_neuron", "bundle": "content_soft_delete_bundle"}, reason,
        done="soft-deleted {kind} {id}", unchanged="{kind} {id} was already deleted: nothing changed",
    )  # fmt: skip


@app.command()
def restore(target: list[str] = TARGET) -> None:
    """Bring soft-deleted content back, with the links its delete took down."""
    change(
        target,
        {"neuron": "content_restore_neuron", "bundle": "content_restore_bundle"},
        done="restored {kind} {id}",
        unchanged="{kind} {id} is not deleted: nothing changed",
    )


@app.command("hard-delete")
def hard_delete(target: list[str] = TARGET) -> None:
    """Remove content for good: only 90 days after its soft delete, and only if the guard still allows."""
    change(
        target, {"neuron": "content_hard_delete_neuron", "bundle": "content_hard_delete_bundle"},
        done="hard-deleted {kind} {id}", unchanged="{kind} {id} was hard-deleted already: nothing changed",
    )  # fmt: skip


@app.command()
def history(target: list[str] = TARGET, as_json: bool = JSON) -> None:
    """The audit trail of the content: every soft delete, restore and hard delete, who, when, why."""

    async def main() -> None:
        import json

        from aipt import db

        kind, content_id = parse_target(target)
        async with common.connection() as conn:
            rows = [dict(r) for r in await conn.fetch(db.queries["content_history"], content_id, kind)]
        for row in rows:
            cascaded = json.loads(row.pop("cascaded"))
            if as_json:
                row["cascaded"] = cascaded
        common.emit(rows, as_json, title=f"history of {content_id}")

    common.run(main)


@app.command("list")
def list_(
    deleted: bool = typer.Option(
        False, "--deleted", help="Soft-deleted content instead, with when each may be hard-deleted."
    ),
    limit: int = typer.Option(200, "--limit", "-n", min=1, metavar="N"),
    as_json: bool = JSON,
) -> None:
    """Neurons and bundles with their ids (live ones, or soft-deleted ones with --deleted)."""

    async def main() -> list[dict]:
        from aipt import db

        async with common.connection() as conn:
            rows = [dict(r) for r in await conn.fetch(db.queries["list_content"], deleted, limit)]
        drop = () if deleted else ("deleted_at", "deletion_reason", "hard_delete_from")
        return [{k: v for k, v in r.items() if k not in drop} for r in rows]

    common.emit(
        common.run(main),
        as_json,
        title="deleted content" if deleted else "content",
        empty="(no deleted content)" if deleted else "(no content)",
    )
