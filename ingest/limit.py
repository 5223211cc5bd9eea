"""The stripe_webhook limit, spent from the shared Postgres bucket in leases.

A check per webhook costs Postgres a write transaction (~150 µs of its CPU) and the server a round
trip, which cut ingest's throughput by a third (docs/benchmarks.md). So a process takes several
tokens per check and spends them on the next webhooks: at least `lease`, or as many as webhooks are
waiting for that check. Tokens are taken before they are used and a process keeps at most lease - 1
left over, so all processes together never admit more than the bucket allows, give or take those
leftovers. Leftovers expire after LEASE_SECONDS: a quiet process does not sit on tokens for a later
burst. Near an empty bucket leases shrink to what it holds, down to one token per webhook: the plain
check again.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from aipt import db

LEASE_SECONDS = 10.0


class WebhookLimit:
    def __init__(self, lease: int):
        self.lease = lease
        self.left = None  # whole tokens the bucket held at the last check; None: not known yet
        self.tokens = 0  # taken and not spent yet
        self.expires = 0.0
        self.waiting = 0
        self.lock = asyncio.Lock()

    def _spend(self) -> bool:
        if self.tokens and time.monotonic() < self.expires:
            self.tokens -= 1
            return True
        return False

    async def spend(self, pool: asyncpg.Pool) -> int | None:
        """Spend one token: None when the webhook may go on, else the seconds to wait (Retry-After)."""
        if self._spend():
            return None
        self.waiting += 1
        try:
            await self.lock.acquire()  # one check at a time; the webhooks waiting here share its lease
        finally:
            self.waiting -= 1
        try:
            if self._spend():
                return None
            take = max(self.lease, self.waiting + 1)
            if self.left is not None:
                take = max(1, min(take, self.left))
            async with pool.acquire() as conn:
                allowed, left, retry_after = await conn.fetchrow(db.queries["check_webhook_limit"], take)
                if not allowed and take > 1:  # the bucket holds less than that: ask for this webhook alone
                    take = 1
                    allowed, left, retry_after = await conn.fetchrow(db.queries["check_webhook_limit"], take)
            self.left = left if allowed else 0
            if not allowed:
                return retry_after
            self.tokens, self.expires = take - 1, time.monotonic() + LEASE_SECONDS
            return None
        finally:
            self.lock.release()
