"""Structured (JSON lines) logging for the service.

Log records carry what happened (route, status, duration, model version, ``request_id``), never
what was sent: no client identifiers, ratings or dates. Messages are fixed strings; details go in
``extra={"fields": {...}}`` and must be non-identifying.

Each record is written to stderr as it happens by the standard ``logging.StreamHandler``, which
flushes after every line: a line logged before the process dies, even by SIGKILL, is on stderr.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson


def _utc_ms(t: float) -> str:
    """``t`` (seconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``, as the audit writes it."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and the ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _utc_ms(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception class only: messages and tracebacks can quote request data.
            doc["error"] = record.exc_info[0].__name__
        return orjson.dumps(doc, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """Route the service's and uvicorn's loggers to stderr as JSON lines, one per record.

    Calling it again replaces the handler: each logger keeps exactly one.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("service", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    # uvicorn's access log prints the raw path and client address; our middleware logs the
    # route template instead.
    logging.getLogger("uvicorn.access").disabled = True
