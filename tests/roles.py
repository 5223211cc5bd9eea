"""Act as PostgREST does: `set local role` plus `request.jwt.claims`, inside a transaction."""

from __future__ import annotations

import json
import uuid
from contextlib import asynccontextmanager

import asyncpg


def claims_for(role: str, user_id: uuid.UUID | str | None = None, admin: bool = False) -> dict:
    claims: dict = {"role": role}
    if user_id is not None:
        claims["sub"] = str(user_id)
    if admin:
        claims["app_metadata"] = {"role": "admin"}
    return claims


@asynccontextmanager
async def acting_as(
    conn: asyncpg.Connection, role: str, user_id=None, admin: bool = False, headers: dict | None = None
):
    """Run the block as `role` ('anon', 'authenticated', 'service_role') with that JWT, then roll back.

    The transaction is rolled back at the end so a test's writes as a role never leak; assert
    inside the block, or commit explicitly through a separate connection.
    """
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute(f"set local role {role}")
        await conn.execute(
            "select set_config('request.jwt.claims', $1, true)", json.dumps(claims_for(role, user_id, admin))
        )
        if headers is not None:
            await conn.execute("select set_config('request.headers', $1, true)", json.dumps(headers))
        yield conn
    finally:
        await tr.rollback()
