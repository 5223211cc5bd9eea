"""A worker's own tally of what its jobs did, per minute (applied, failed, retried, dead for events).

arq's heartbeat counts jobs that raised; ours never do (a failed event is recorded in Postgres and the
job ends normally), so arq would say 0 failures after many. The runner writes this worker's last hour
in its heartbeat line and adds the counts to per-minute hashes in Redis that `aipt status` sums over
every worker.
"""

from __future__ import annotations

import time
from collections import Counter

KINDS = ("applied", "failed", "retried", "dead")
HOUR = 60


def _minute() -> int:
    return int(time.time() // 60)


class Tally:
    def __init__(self) -> None:
        self._minutes: dict[int, Counter] = {}
        self._unsent: dict[int, Counter] = {}

    def count(self, *kinds: str) -> None:
        """Count one of each kind now."""
        minute = _minute()
        for book in (self._minutes, self._unsent):
            book.setdefault(minute, Counter()).update(kinds)

    def last_hour(self) -> dict[str, int]:
        oldest = _minute() - HOUR + 1
        for minute in [m for m in self._minutes if m < oldest]:
            del self._minutes[minute]
        total = sum(self._minutes.values(), Counter())
        return {k: total[k] for k in KINDS}

    def take_unsent(self) -> dict[int, Counter]:
        unsent, self._unsent = self._unsent, {}
        return unsent

    def give_back(self, unsent: dict[int, Counter]) -> None:
        """Redis refused them: send them with the next heartbeat."""
        for minute, counts in unsent.items():
            self._unsent.setdefault(minute, Counter()).update(counts)
