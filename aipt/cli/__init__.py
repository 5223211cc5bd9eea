"""The `aipt` command: one entry point for operators, deploys and development.

Command modules import only typer at load time; what a command needs (asyncpg, stripe, uvicorn...)
is imported when it runs, so `aipt --help` and `aipt status --help` cost what typer itself costs
(bench/cli.py measures both beside `import typer` and a one-command typer app).
"""

from __future__ import annotations

import os
import sys
import typing

# Plain help (click's layout): typer's rich help costs ~60 ms of imports on every `--help`. Set
# TYPER_USE_RICH=1 for the boxed one.
os.environ.setdefault("TYPER_USE_RICH", "0")

import typer
import typer.core

from aipt.cli import common

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _value_name(self, ctx) -> str | None:
    """click's word for what an option takes (TEXT, INTEGER, [a|b], its metavar); none for a flag or an argument.

    Typer 0.2x prints Python annotations instead (<str>, <bool>, <list[str]>);
    tests/acceptance/test_operator_cli.py holds every command's help to this.
    """
    if isinstance(self, typer.core.TyperArgument) or getattr(self, "is_flag", False) or getattr(self, "count", False):
        return None  # an argument's name is its metavar, shown already; a flag takes no value
    if self.metavar is not None:
        return self.metavar
    desc = self.type_descriptor
    if desc.is_choice and desc.choices:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices) + "]"
    annotation = desc.annotation
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    name = getattr(annotation, "__name__", str(annotation))
    return {"str": "TEXT", "int": "INTEGER", "float": "FLOAT"}.get(name, name.upper())


typer.core.TyperOption.display_type_rich = _value_name
typer.core.TyperArgument.display_type_rich = _value_name

VERBOSE_FLAGS = ("-v", "--verbose")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors (anywhere on the line)."),
) -> None:
    common.state["verbose"] = common.state["verbose"] or verbose


@app.command()
def migrate(
    check: bool = typer.Option(
        False, "--check", help="Say what a run would create, adopt, change or refuse; change nothing."
    ),
) -> None:
    """Apply new files of schema/ in order, all in one transaction (all or nothing)."""

    async def main() -> None:
        from aipt import migrate as migrations

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
from aipt.cli import billing, content, events, ratelimit  # noqa: E402

app.add_typer(events.events_app, name="events")
app.add_typer(events.dlq_app, name="dlq")
app.add_typer(billing.customers_app, name="customers")
app.add_typer(billing.plans_app, name="plans")
app.add_typer(content.app, name="content")
app.add_typer(ratelimit.app, name="ratelimit")


def main() -> None:
    # -v / --verbose anywhere on the line, not only before the command (until a `--`).
    args = sys.argv[1:]
    end = args.index("--") if "--" in args else len(args)
    if any(a in VERBOSE_FLAGS for a in args[:end]):
        common.state["verbose"] = True
        args = [a for a in args[:end] if a not in VERBOSE_FLAGS] + args[end:]
    app(args=args, prog_name="aipt")
