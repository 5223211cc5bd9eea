"""Health, as `aipt status` reports it: is money flowing? One look at Postgres and Redis, and what needs attention.

Each side is probed on its own with a short timeout, so a Redis or Postgres outage is reported (and
makes the check fail) instead of hanging or hiding the other side. Reads only: index-backed queries
on Postgres, a few keys on Redis.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from aipt import db, queue
from aipt.settings import CLEANUP_JOBS, Settings

PROBE_SECONDS = 5


def age(seconds: float | None) -> str:
    """12s, 4m05s, 3h07m, 2d04h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _down(exc: BaseException) -> str:
    return f"down: {type(exc).__name__}: {exc}" if str(exc) else f"down: {type(exc).__name__}"


async def _redis_side(settings: Settings, report: dict) -> None:
    redis = None
    try:
        redis = queue.connect(settings)  # inside: a malformed REDIS_URL is a finding too
        async with asyncio.timeout(PROBE_SECONDS):
            report["queue"]["depth"] = await queue.queue_depth(redis)
            beat, left = await queue.heartbeat(redis, queue.health_check_key(settings))
            report["workers"].update(
                alive=beat is not None,
                heartbeat=beat,
                expires_in_seconds=left,
                last_hour=await queue.counts_last_hour(redis),
            )
            report["crons"]["sweeper"] = await queue.last_cron_run(redis, "sweeper")
        report["redis"] = "ok"
    except Exception as exc:
        report["redis"] = _down(exc)
    finally:
        if redis is not None:
            await queue.close(redis)


async def _postgres_side(settings: Settings, report: dict) -> None:
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            conn = await db.connect(settings)
            try:
                by_status = await conn.fetch(db.queries["events_by_status"])
                modes = await conn.fetchrow(db.queries["events_by_mode"])
                gauges = await conn.fetchrow(db.queries["queue_gauges"])
                runs = {r["job"]: r for r in await conn.fetch(db.queries["last_cleanup_runs"])}
            finally:
                await conn.close()
        report["postgres"] = "ok"
    except Exception as exc:
        report["postgres"] = _down(exc)
        return
    events = report["events"]
    events["last_hour"] = {r["status"]: r["last_hour"] for r in by_status if r["last_hour"]}
    events["last_day"] = {r["status"]: r["last_day"] for r in by_status}
    events.update(
        dead=gauges["dead"], retrying=gauges["retrying"], oldest_pending_seconds=gauges["oldest_pending_seconds"]
    )
    events["modes_last_day"] = {"live": modes["live"], "test": modes["test"]}
    for job in CLEANUP_JOBS:
        run, entry = runs.get(job), {"schedule": getattr(settings.cleanup, f"{job}_at"), "status": "never ran"}
        if run is not None:
            entry.update(
                status=run["status"],
                started_at=run["started_at"].isoformat(),
                finished_at=run["finished_at"] and run["finished_at"].isoformat(),
                counts=json.loads(run["counts"]),
                error=run["error"],
            )
        report["crons"][f"cleanup:{job}"] = entry


def _warnings(settings: Settings, report: dict) -> list[str]:
    """Worth a look, but nothing is failing: the report stays healthy."""
    modes = report["events"].get("modes_last_day") or {}
    if modes.get("live") and modes.get("test"):
        return [
            f"events of both modes arrived in the last day ({modes['live']} live, {modes['test']} test): is a "
            f"test-mode secret configured beside the live one? [stripe] accepted_modes is "
            f"{settings.stripe.accepted_modes!r}"
        ]
    return []


def _attention(settings: Settings, report: dict) -> list[str]:
    needs: list[str] = []
    if report["postgres"] != "ok":
        needs.append(
            f"Postgres is unreachable ({report['postgres'].removeprefix('down: ')}): ingest answers 503 and nothing is applied"
        )
    if report["redis"] != "ok":
        needs.append(
            f"Redis is unreachable ({report['redis'].removeprefix('down: ')}): events are stored but not consumed until it is back"
        )
    elif not report["workers"]["alive"]:
        needs.append(
            f"no live worker: no heartbeat at {report['workers']['key']} "
            f"(each worker writes it every {settings.queue.health_check_seconds:g} s); start `aipt worker`"
        )
    events = report["events"]
    if events.get("dead"):
        needs.append(
            f"{events['dead']} dead event(s) need an operator: `aipt dlq list`; fix the cause and "
            f"`aipt dlq requeue`, or `aipt dlq discard --reason ...` one that must not apply (docs/operations.md)"
        )
    oldest = events.get("oldest_pending_seconds")
    if oldest is not None and oldest > settings.status.pending_max_age_seconds:
        needs.append(
            f"the oldest pending event has waited {age(oldest)} (threshold "
            f"{settings.status.pending_max_age_seconds:g} s): are workers consuming? `aipt events list --status pending`"
        )
    for name, run in report["crons"].items():
        if name.startswith("cleanup:") and run and run["status"] in ("error", "abandoned"):
            needs.append(f"{name} last run {run['status']}: {run.get('error') or 'no message'}")
    return needs


async def gather(settings: Settings) -> dict[str, Any]:
    """The whole picture, as plain data; `healthy` is False whenever `attention` says something."""
    report: dict[str, Any] = {
        "checked_at": dt.datetime.now(dt.UTC).isoformat(),
        "healthy": False,
        "attention": [],
        "warnings": [],
        "postgres": "unknown",
        "redis": "unknown",
        "queue": {"name": settings.queue.name, "depth": None},
        "workers": {
            "key": queue.health_check_key(settings),
            "alive": None,
            "heartbeat": None,
            "expires_in_seconds": None,
            "last_hour": None,
        },
        "events": {"last_hour": {}, "last_day": {}, "oldest_pending_seconds": None, "dead": None, "retrying": None},
        "crons": {"sweeper": None},
    }
    await asyncio.gather(_redis_side(settings, report), _postgres_side(settings, report))
    report["attention"] = _attention(settings, report)
    report["warnings"] = _warnings(settings, report)
    report["healthy"] = not report["attention"]
    return report
