"""`aipt status` (a monitor check) and `aipt cleanup` (the retention cleanups, now)."""

from __future__ import annotations

from enum import Enum

import typer

from aipt.cli import common

# aipt.settings.CLEANUP_JOBS, written out so that `--help` does not import the settings (a test keeps them equal).
Job = Enum("Job", {j: j for j in ("stripe_events", "webhook_failures", "rate_limit", "deleted_content")}, type=str)
CLEANUP_JOBS = tuple(j.value for j in Job)


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
    from rich.table import Table

    from aipt.health import age

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
        table.add_row(
            "workers",
            f"alive: {workers['heartbeat']} (next heartbeat due within {workers['expires_in_seconds']:.0f} s)",
        )
    else:
        table.add_row(
            "workers", "unknown (Redis down)" if workers["alive"] is None else f"none alive (no {workers['key']})"
        )
    if workers.get("last_hour") is not None:
        table.add_row(
            "worker jobs, last hour",
            _counts({k: workers["last_hour"].get(k, 0) for k in ("applied", "failed", "retried", "dead")}),
        )
    table.add_row("events, last hour", _counts(events["last_hour"]))
    table.add_row("events, last day", _counts(events["last_day"]))
    table.add_row("oldest pending", age(events["oldest_pending_seconds"]))
    table.add_row("dead", "-" if events["dead"] is None else str(events["dead"]))
    table.add_row("retrying", "-" if events["retrying"] is None else str(events["retrying"]))
    for name, run in report["crons"].items():
        table.add_row(name, _cron_line(name, run))
    out.print(table)
    for line in report["attention"]:
        out.print(f"[red]needs attention:[/red] {line}", highlight=False)
    for line in report["warnings"]:
        out.print(f"[yellow]warning:[/yellow] {line}", highlight=False)


def _unconfigured(exc: Exception) -> dict:
    """The report when the settings themselves are wrong: still one JSON object for a monitor."""
    import datetime as dt

    return {
        "checked_at": dt.datetime.now(dt.UTC).isoformat(),
        "healthy": False,
        "attention": [f"configuration: {exc}"],
        "warnings": [],
        "postgres": "unknown",
        "redis": "unknown",
    }


def status(
    as_json: bool = typer.Option(False, "--json", help="The report as one JSON object (also when it cannot be made)."),
) -> None:
    """Queue, workers, events, dead letters and crons. Exit 0 when healthy, 1 when something needs attention."""

    async def main() -> dict:
        from aipt import health

        try:
            s = common.load_settings()
        except Exception as exc:
            if not as_json:
                raise
            return _unconfigured(exc)
        report = await health.gather(s)
        for side, key in (("postgres", "DATABASE_URL"), ("redis", "REDIS_URL")):
            if report[side] != "ok" and (sentence := common.dev_not_running(key)):
                report["attention"].append(sentence)
        return report

    report = common.run(main)
    if as_json:
        common.print_json(report)
    else:
        _print_report(report)
    if not report["healthy"]:
        raise typer.Exit(1)


def cleanup(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted now; delete nothing"),
    jobs: list[Job] = typer.Option(
        None, "--job", metavar="JOB", help="Only this job (repeatable): " + ", ".join(CLEANUP_JOBS) + "."
    ),
    max_seconds: float = typer.Option(
        None, "--max-seconds", metavar="SECONDS", help="Start no new batch after this long (default: no limit)"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list of objects, one per job)."),
) -> None:
    """Run the retention cleanups now, batch after batch, through the worker's SQL functions."""
    chosen = [j.value for j in jobs] if jobs else list(CLEANUP_JOBS)

    async def main() -> list:
        import os
        import socket

        from aipt import db, retention

        s = common.load_settings()
        if dry_run:
            async with common.connection() as conn:
                return [await retention.preview(conn, s, job) for job in chosen]
        by = f"cli:{socket.gethostname()}:{os.getpid()}"
        outcomes = []
        for job in chosen:
            try:
                outcomes.append(await retention.run(s, job, run_by=by, max_seconds=max_seconds))
            except db.DatabaseError as exc:
                raise common.CommandError(str(exc)) from None
        return outcomes

    outcomes = common.run(main)
    if as_json:
        common.print_json([o.as_dict() for o in outcomes])
    else:
        from aipt.retention import describe

        for o in outcomes:
            common.console.print(describe(o), highlight=False)
    if any(o.status == "error" for o in outcomes):
        raise typer.Exit(1)
