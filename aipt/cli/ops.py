"""`aipt cleanup`: the retention cleanups, now."""

from __future__ import annotations

import json
import os
import socket
import sys

import typer

from aipt import db
from aipt.cli import common
from aipt.settings import CLEANUP_JOBS


def cleanup(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted now; delete nothing"),
    jobs: list[str] = typer.Option(None, "--job", help=f"Only this job (repeatable): {', '.join(CLEANUP_JOBS)}"),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Start no new batch after this long (default: no limit)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run the retention cleanups now, batch after batch, through the worker's SQL functions."""
    from worker import cleanup as cleanups

    chosen = list(jobs or CLEANUP_JOBS)
    unknown = [j for j in chosen if j not in CLEANUP_JOBS]
    if unknown:
        raise typer.BadParameter(f"unknown job(s) {', '.join(unknown)}; choose from {', '.join(CLEANUP_JOBS)}")

    async def main() -> list:
        s = common.load_settings()
        if dry_run:
            async with common.connection() as conn:
                return [await cleanups.preview(conn, s, job) for job in chosen]
        by = f"cli:{socket.gethostname()}:{os.getpid()}"
        outcomes = []
        for job in chosen:
            try:
                outcomes.append(await cleanups.run(s, job, run_by=by, max_seconds=max_seconds))
            except db.DatabaseError as exc:
                raise common.CommandError(str(exc)) from None
        return outcomes

    outcomes = common.run(main)
    if as_json:
        sys.stdout.write(json.dumps([o.as_dict() for o in outcomes], indent=2) + "\n")
    else:
        for o in outcomes:
            common.console.print(cleanups.describe(o), highlight=False)
    if any(o.status == "error" for o in outcomes):
        raise typer.Exit(1)
