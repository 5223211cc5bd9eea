"""`aipt status` (a monitor check) and `aipt cleanup` (the retention cleanups, now)."""

from __future__ import annotations

import json
import os
import socket
import sys

import typer
from rich.table import Table

from aipt import db, status as health
from aipt.cli import common
from aipt.settings import CLEANUP_JOBS


def _counts(counts: dict | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (counts or {}).items()) or "-"


def _cron_line(name: str, run: dict | None) -> str:
    if run is None:
        return "no run recorded"
    if name == "sweeper":
        return f"{run['at']}: {run['due']} due, {run['enqueued']} enqueued ({run['duration_ms']} ms)"
    line = f"{run['status']}"
    if run.get("started_at"):
        line += f" {run['started_at']}: {_counts(run.get('counts'))}"
    if run.get("error"):
        line += f" ({run['error']})"
    return line + f"  [daily {run['schedule']}]"


def _print_report(report: dict) -> None:
    out = common.console
    verdict = "[green]healthy[/green]" if report["healthy"] else "[red bold]NEEDS ATTENTION[/red bold]"
    out.print(f"aipt status: {verdict}  ({report['checked_at']})")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    workers, events, q = report["workers"], report["events"], report["queue"]
    table.add_row("postgres", report["postgres"])
    table.add_row("redis", report["redis"])
    table.add_row("queue", f"{q['name']}: {'-' if q['depth'] is None else q['depth']} job(s) waiting")
    if workers["alive"]:
        table.add_row("workers", f"alive: {workers['heartbeat']} (next heartbeat due within {workers['expires_in_seconds']:.0f} s)")
    else:
        table.add_row("workers", "unknown (Redis down)" if workers["alive"] is None else f"none alive (no {workers['key']})")
    table.add_row("events, last hour", _counts(events["last_hour"]))
    table.add_row("events, last day", _counts(events["last_day"]))
    table.add_row("oldest pending", health.age(events["oldest_pending_seconds"]))
    table.add_row("dead", "-" if events["dead"] is None else str(events["dead"]))
    table.add_row("retrying", "-" if events["retrying"] is None else str(events["retrying"]))
    for name, run in report["crons"].items():
        table.add_row(name, _cron_line(name, run))
    out.print(table)
    for line in report["attention"]:
        out.print(f"[red]needs attention:[/red] {line}", highlight=False)
    for line in report["warnings"]:
        out.print(f"[yellow]warning:[/yellow] {line}", highlight=False)


def status(as_json: bool = typer.Option(False, "--json", help="The report as one JSON object")) -> None:
    """Queue, workers, events, dead letters and crons. Exit 0 when healthy, 1 when something needs attention."""

    async def main() -> dict:
        return await health.gather(common.load_settings())

    report = common.run(main)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        _print_report(report)
    if not report["healthy"]:
        raise typer.Exit(1)


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
