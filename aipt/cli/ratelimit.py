"""`aipt ratelimit`: what the rate limiter sees, from the admin-only views of 26_rate_limit.sql."""

from __future__ import annotations

import typer

from aipt.cli import common

app = typer.Typer(no_args_is_help=True, help="Rate limits: per-endpoint dashboard and the busiest callers.")

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


@app.command()
def dashboard(as_json: bool = JSON) -> None:
    """Per endpoint: active buckets, requests and blocked in the last hour, block rate."""

    async def main() -> None:
        from aipt import db

        async with common.connection() as conn:
            rows = await conn.fetch(db.queries["rate_limit_dashboard"])
        common.emit(rows, as_json, title="Rate limits, last hour")

    common.run(main)


@app.command("top-users")
def top_users(
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many callers to show."),
    as_json: bool = JSON,
) -> None:
    """The busiest callers of the last 24 hours (users by id, anonymous callers by address)."""

    async def main() -> None:
        from aipt import db

        async with common.connection() as conn:
            rows = await conn.fetch(db.queries["rate_limit_top_users"], limit)
        common.emit(rows, as_json, title="Top callers, last 24 hours")

    common.run(main)
