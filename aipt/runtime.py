"""Starting the two processes, `aipt web` and `aipt worker`: settings checked, logging, metrics, loop.

The core names the code it starts by import string, as a Procfile or uvicorn's command line does; it
never imports ingest/ or worker/ (docs/architecture.md, tests/unit/test_architecture.py).
"""

from __future__ import annotations

import importlib

from aipt import logs, metrics
from aipt.logs import log
from aipt.settings import Settings

WEB_APP = "ingest.app:create_app"  # a factory of the ASGI app, given the settings
WEB_PROTOCOL = "ingest.http:protocol_for"  # uvicorn's HTTP protocol with [web]'s limits
WORKER_SPEC = "worker.main:spec"  # what a worker runs (aipt.queue.WorkerSpec), given the settings


def load(name: str):
    """The object an import string 'package.module:attribute' names."""
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)


def run_web(settings: Settings, host: str | None = None) -> None:
    """Serve the webhook endpoint (uvicorn, uvloop + httptools) until told to stop."""
    import uvicorn

    settings.require("database_url", "redis_url", "stripe_webhook_secret")
    w = settings.web
    uvicorn.run(
        WEB_APP,
        factory=True,
        host=host or w.host,
        port=settings.port,
        loop="uvloop",
        http=load(WEB_PROTOCOL)(w),
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_keep_alive=w.keepalive_timeout_seconds,
        limit_concurrency=w.max_connections,
    )


def run_worker(settings: Settings) -> None:
    """Run a worker until told to stop: its metrics port (when set), then the queue's runner."""
    from aipt.queue import runner

    settings.require("database_url", "redis_url")
    logs.configure(settings.log_format, settings.log_level)
    if settings.metrics.worker_port:
        m = settings.metrics
        try:
            metrics.serve(m.worker_port, m.worker_host)
            log.info("worker metrics served", host=m.worker_host, port=m.worker_port, path="/metrics")
        except OSError as exc:  # e.g. a second worker on the host: it still works, without a metrics port
            log.error("worker metrics not served", host=m.worker_host, port=m.worker_port, error=str(exc))
    runner.run(settings, load(WORKER_SPEC)(settings))
