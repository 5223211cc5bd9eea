"""The stripe_webhook limit, spent from the shared Postgres bucket in leases.

A check per webhook costs Postgres a write transaction (~150 µs of its CPU) and the server a round
trip, which cut ingest's throughput by a quarter (docs/benchmarks.md). So a process takes several
tokens per check (a lease) and spends them on the next webhooks. The next lease is taken in the
background once half of the last one is left, so webhooks rarely wait for a check; a lease starts at
`lease` tokens and doubles each time webhooks ran out while it was on its way (the check took longer
than half a lease lasts), up to MAX_GROWTH times that. A lease of 1 takes nothing ahead: tokens only
for the webhooks waiting on a check.

Tokens leave the shared bucket before they are spent, so all processes together never admit more
than it gives, give or take the few a process holds. Those expire after LEASE_SECONDS (and the lease
size starts over): a quiet process does not sit on tokens for a later burst. Near an empty bucket
leases shrink to what it held at the last check, down to one token per webhook: the plain check.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg

from aipt import db

LEASE_SECONDS = 10.0
MAX_GROWTH = 64


class WebhookLimit:
    def __init__(self, pool: asyncpg.Pool, lease: int):
        self.pool = pool
        self.lease = lease
        self.size = lease  # tokens the next lease asks for
        self.tokens = 0  # taken from the bucket, not spent yet
        self.expires = 0.0
        self.left: int | None = None  # whole tokens the bucket held after the last check (None: unknown)
        self.waiting = 0  # webhooks waiting for the check in flight
        self.dry = False  # a webhook found no token while the lease taken ahead was on its way
        self.check: asyncio.Task | None = None

    async def spend(self) -> int | None:
        """Spend one token: None when the webhook may go on, else the seconds to wait (Retry-After)."""
        while True:
            if self.tokens and time.monotonic() < self.expires:
                self.tokens -= 1
                if self.tokens < self.size // 2 and self.left and self.check is None:
                    self._start()
                return None
            if self.tokens:  # the last lease expired unspent: traffic is slow, start small again
                self.size, self.tokens = self.lease, 0
            elif self.check is not None:  # the lease taken ahead did not land in time: too small for this rate
                self.dry = True
            if self.check is None:
                self._start()
            self.waiting += 1
            try:
                retry_after = await asyncio.shield(self.check)
            finally:
                self.waiting -= 1
            if retry_after is not None:
                return retry_after

    def _start(self) -> None:
        if self.dry:
            self.size, self.dry = min(self.size * 2, self.lease * MAX_GROWTH), False
        self.check = asyncio.get_running_loop().create_task(self._take())
        # A background lease that fails has nobody to tell: the next webhook's own check will.
        self.check.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _take(self) -> int | None:
        try:
            take = max(self.size, self.waiting)
            if self.left is not None:
                take = max(1, min(take, self.left))
            async with self.pool.acquire() as conn:
                allowed, left, retry_after = await conn.fetchrow(db.queries["check_webhook_limit"], take)
                if not allowed and take > 1 and self.waiting:  # less than that left: ask for one webhook alone
                    take = 1
                    allowed, left, retry_after = await conn.fetchrow(db.queries["check_webhook_limit"], take)
            self.left = left if allowed else 0
            if not allowed:
                self.size = self.lease
                return retry_after
            now = time.monotonic()
            kept = self.tokens if now < self.expires else 0
            self.tokens, self.expires = kept + take, now + LEASE_SECONDS
            return None
        finally:
            self.check = None

    async def close(self) -> None:
        if self.check is not None:
            self.check.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.check
