"""Structured (JSON lines) logging for the service.

Log records carry what happened (route, status, duration, model version, ``request_id``), never
what was sent: no client identifiers, ratings or dates. Messages are fixed strings; details go in
``extra={"fields": {...}}`` and must be non-identifying.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

#: Attributes every LogRecord has; anything else was passed through ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and the ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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
        elif record.__dict__.get("exc_class"):
            doc["error"] = record.__dict__["exc_class"]  # set by _QueueHandler.prepare
        return json.dumps(doc, default=str)


class _QueueHandler(logging.handlers.QueueHandler):
    """Hands records to the listener thread, which formats and writes them.

    The base class formats in the caller with the default formatter, which appends the
    traceback to the message; here only what :class:`JsonFormatter` reads is kept, and an
    exception travels as its class name.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.__dict__["exc_class"] = record.exc_info[0].__name__
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return record


_listener: logging.handlers.QueueListener | None = None


def _stop_listener() -> None:
    """Write out every queued line (at exit, or before a new configuration)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure_logging(level: str = "INFO") -> None:
    """Route the service's and uvicorn's loggers to stderr as JSON lines.

    Records are queued and written by a background thread (``QueueListener``): formatting a
    line and writing it to stderr took ~20 us of the event loop per request, and a slow reader
    of stderr would have stalled every request. The queue is drained at exit.
    """
    global _listener
    _stop_listener()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter())
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(lines, stream, respect_handler_level=False)
    _listener.start()
    handler = _QueueHandler(lines)
    for name in ("service", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    # uvicorn's access log prints the raw path and client address; our middleware logs the
    # route template instead.
    logging.getLogger("uvicorn.access").disabled = True


atexit.register(_stop_listener)
