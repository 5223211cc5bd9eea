"""The `aipt` command: one entry point for operators, deploys and development."""

from __future__ import annotations

import typer

from aipt.cli import common

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors.")) -> None:
    common.state["verbose"] = verbose


@app.command()
def migrate(
    check: bool = typer.Option(False, "--check", help="Say what a run would create, adopt, change or refuse; change nothing."),
) -> None:
    """Apply new files of schema/ in order, all in one transaction (all or nothing)."""
    from aipt import migrate as migrations

    async def main() -> None:
        async with common.connection() as conn:
            if check:
                from aipt import migrate_check

                report = await migrate_check.check(conn)
                typer.echo("\n".join(report.lines()))
                if not report.ok:
                    raise typer.Exit(1)
                return
            try:
                applied = await migrations.migrate(conn)
            except migrations.MigrationError as exc:
                raise common.CommandError(str(exc)) from None
        common.console.print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))

    common.run(main)


from aipt.cli import dev, ops, service  # noqa: E402

app.command()(service.web)
app.command()(service.worker)
app.command("send-test-event")(service.send_test_event)
app.command()(dev.dev)
app.command()(ops.status)
app.command()(ops.cleanup)

# Command groups, one module each.
from aipt.cli import content, events, ratelimit  # noqa: E402

app.add_typer(events.events_app, name="events")
app.add_typer(events.dlq_app, name="dlq")
app.add_typer(content.app, name="content")
app.add_typer(ratelimit.app, name="ratelimit")


def main() -> None:
    app()
