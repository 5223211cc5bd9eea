"""Telling a human: one error log line, and a Slack-compatible POST when ALERT_WEBHOOK_URL is set.

Posting never blocks event processing: it runs as its own task, retried with tenacity, and a
receiver that stays down costs one logged error, not an event.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from aipt.logs import log
from aipt.settings import Settings

_tasks: set[asyncio.Task] = set()


async def post(settings: Settings, text: str) -> bool:
    """POST {"text": text} to the alert webhook; True when it was delivered."""
    if not settings.alert_webhook_url:
        return False
    try:
        async with httpx.AsyncClient(timeout=settings.alerts.timeout_seconds) as client:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.2, max=2), reraise=True
            ):
                with attempt:
                    response = await client.post(settings.alert_webhook_url, json={"text": text})
                    response.raise_for_status()
        return True
    except Exception as exc:
        log.error(
            "alert not delivered",
            error=_without_url(exc, settings.alert_webhook_url),
            alert_host=urlsplit(settings.alert_webhook_url).hostname,
            alert=text,
        )
        return False


def _without_url(exc: Exception, url: str) -> str:
    """The error, minus the alert URL: its path is the secret (a Slack webhook URL is a credential)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from the alert webhook"
    parts = urlsplit(url)
    text = str(exc) or type(exc).__name__
    for secret in (url, parts.path, parts.query):
        if secret and secret != "/":
            text = text.replace(secret, "…")
    return text


def send(settings: Settings, text: str) -> asyncio.Task:
    """Fire and forget (the task is kept referenced until it ends)."""
    task = asyncio.get_running_loop().create_task(post(settings, text))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


async def drain(timeout: float = 5) -> None:
    """Let alerts in flight finish (on shutdown)."""
    if _tasks:
        await asyncio.wait(set(_tasks), timeout=timeout)
