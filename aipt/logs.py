"""structlog, configured once: JSON when not on a terminal, context bound per request or job.

Our own lines are rendered by structlog and written straight to stderr (~10 µs a line); the standard
library's (arq, uvicorn) go through logging and a ProcessorFormatter into the same format and stream.
The stdlib route costs ~25 µs a line, which the webhook and the consume job would pay on every event.
"""

from __future__ import annotations

import logging
import sys

import structlog


class _Stderr:
    """Writes a rendered line to whatever sys.stderr is at the time (test runners swap it)."""

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    debug = info = warning = error = critical = exception = msg


_STDERR = _Stderr()


def _ours(logger, method_name, event_dict):
    event_dict.setdefault("logger", "aipt")
    return event_dict


def configure(log_format: str = "auto", level: str = "info") -> None:
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer = structlog.dev.ConsoleRenderer() if log_format == "console" else structlog.processors.JSONRenderer()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, _ours, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *args: _STDERR,
        cache_logger_on_first_use=False,  # tests swap processors to capture logs
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "arq"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)


log = structlog.get_logger()
