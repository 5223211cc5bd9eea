"""`aipt customers` and `aipt plans`: fix what a dead event needs without writing tables by hand.

"user not known yet for customer cus_..." is fixed by `aipt customers map`; "no plan for price
price_..." by `aipt plans add`. Each change is an admin-only SQL function (80_operator_actions.sql)
that records who made it; then `aipt dlq requeue` the events that waited for it.
"""

from __future__ import annotations

import typer

from aipt.cli import common

customers_app = typer.Typer(no_args_is_help=True, help="Stripe customers and the users they belong to.")
plans_app = typer.Typer(no_args_is_help=True, help="Plans and the Stripe prices that buy them.")

JSON = typer.Option(False, "--json", help="Print JSON (a list of objects).")


async def _user_id(conn, who: str):
    """A user id from a uuid or an e-mail address."""
    import uuid

    from aipt import db

    try:
        return uuid.UUID(who)
    except ValueError:
        pass
    if "@" not in who:
        raise common.CommandError(f"{who!r} is neither a user id (uuid) nor an e-mail address")
    found = await conn.fetch(db.queries["user_by_email"], who)
    if not found:
        raise common.CommandError(f"no user with e-mail {who}")
    if len(found) > 1:
        raise common.CommandError(f"more than one user has e-mail {who}: name the user by id")
    return found[0]["id"]


@customers_app.command("map")
def customers_map(
    customer: str = typer.Argument(..., metavar="CUS", help="The Stripe customer id (cus_...)."),
    user: str = typer.Argument(..., metavar="USER", help="The user's id, or their e-mail address."),
    replace: bool = typer.Option(
        False, "--replace", help="The customer is mapped to another user: map it to this one."
    ),
) -> None:
    """Map a Stripe customer to a user (what a checkout naming both teaches); recorded with who did it."""

    async def main() -> None:
        import asyncpg

        from aipt import db, operations

        async with common.connection() as conn:
            user_id = await _user_id(conn, user)
            try:
                result = await conn.fetchval(
                    db.queries["map_customer"], customer, user_id, replace, operations.operator()
                )
            except asyncpg.PostgresError as exc:
                raise common.CommandError(operations.refusal(exc)) from None
        words = {
            "mapped": "mapped",
            "replaced": "mapped (replacing the previous user)",
            "unchanged": "was already mapped",
        }
        common.console.print(f"{customer} {words[result]} → {user_id}", highlight=False)
        if result != "unchanged":
            common.console.print(
                f"events that waited for it: aipt dlq list; then aipt dlq requeue ... (or aipt events list --customer {customer})",
                highlight=False,
            )

    common.run(main)


@customers_app.command("list")
def customers_list(
    customer: str = typer.Option(None, "--customer", metavar="CUS", help="Only this customer."),
    user: str = typer.Option(None, "--user", metavar="USER", help="Only this user (id or e-mail)."),
    limit: int = typer.Option(100, "--limit", "-n", min=1, metavar="N"),
    as_json: bool = JSON,
) -> None:
    """Customer → user mappings, newest first."""

    async def main() -> list:
        from aipt import db

        async with common.connection() as conn:
            user_id = await _user_id(conn, user) if user else None
            return await conn.fetch(db.queries["list_customers"], customer, user_id, limit)

    common.emit(common.run(main), as_json, title="Stripe customers", empty="(no customer mapping)")


@plans_app.command("list")
def plans_list(as_json: bool = JSON) -> None:
    """Plans by tier, with every Stripe price that buys each."""

    async def main() -> list:
        from aipt import db

        async with common.connection() as conn:
            return await conn.fetch(db.queries["list_plans"])

    common.emit(common.run(main), as_json, title="Plans", empty="(no plan)")


@plans_app.command("add")
def plans_add(
    price: str = typer.Argument(..., metavar="PRICE", help="The Stripe price id (price_...)."),
    tier: int = typer.Argument(..., metavar="TIER", min=0, help="The tier it gives (0 free, 1, 2, 3...)."),
    name: str = typer.Option(None, "--name", metavar="TEXT", help="The plan's name, when a plan row is made."),
) -> None:
    """Map a Stripe price to a plan of a tier, so its subscriptions apply; recorded with who did it."""

    async def main() -> None:
        import asyncpg

        from aipt import db, operations

        async with common.connection() as conn:
            try:
                plan_id = await conn.fetchval(db.queries["add_plan_price"], price, tier, name, operations.operator())
            except asyncpg.PostgresError as exc:
                raise common.CommandError(operations.refusal(exc)) from None
        common.console.print(f"{price} → plan {plan_id} (tier {tier})", highlight=False)
        common.console.print("events that waited for it: aipt dlq list; then aipt dlq requeue ...", highlight=False)

    common.run(main)
