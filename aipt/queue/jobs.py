"""What a worker runs, said without arq: jobs by name, crons by schedule, and a job's way to come back later."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


class Defer(Exception):
    """Raised by a job: run it again, with the same arguments, `seconds` from now (not an attempt of ours)."""

    def __init__(self, seconds: float):
        super().__init__(f"deferred {seconds:g} s")
        self.seconds = seconds


@dataclass(frozen=True)
class Cron:
    """A scheduled job: `run(ctx, slot)` every `every_seconds`, or daily at `daily_at` (hour, minute, the
    worker's local time). `slot` is the time the run was scheduled for: any number of workers may fire
    the same slot, and the queue runs it once; `run` may rely on the slot to record it once too."""

    name: str
    run: Callable[[dict, dt.datetime | None], Awaitable[Any]]
    timeout: float
    every_seconds: int | None = None
    daily_at: tuple[int, int] | None = None
    at_startup: bool = False

    def __post_init__(self) -> None:
        if (self.every_seconds is None) == (self.daily_at is None):
            raise ValueError(f"cron {self.name}: give every_seconds or daily_at")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process runs. Jobs take (ctx, *args); ctx holds what on_startup put there, plus
    `settings`, `redis` (for enqueueing from a job) and `tally` (counts for the heartbeat)."""

    jobs: dict[str, Callable[..., Awaitable[Any]]]
    crons: list[Cron] = field(default_factory=list)
    on_startup: Callable[[dict], Awaitable[None]] | None = None
    on_shutdown: Callable[[dict], Awaitable[None]] | None = None
