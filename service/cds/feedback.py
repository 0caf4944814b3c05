"""Card feedback (``POST /cds-services/{id}/feedback``), kept as JSON lines.

One line per feedback item: when it was received, the service, the clinic, the request id, the
card's uuid, the outcome, the override reason's system and code, how many suggestions were
accepted, whether the clinician wrote a comment, and when the clinician acted. The free-text
``userComment`` itself is not kept: a clinician may name the client in it, and this file is
not client data. The application store of issue 21 does not exist yet; until it does, this
file in the service's data folder is the store (one writer per process, appends under a lock,
``O_APPEND`` so several workers' whole lines never interleave), capped like the shadow
comparisons by rotation to ``<file>.1`` (:class:`service.jsonl_log.RotatingLog`).
"""

from __future__ import annotations

import threading
from pathlib import Path

import orjson

from service.audit import utc_timestamp
from service.cds.schemas import FeedbackItem
from service.jsonl_log import RotatingLog


class FeedbackWriteError(Exception):
    """The feedback could not be stored (the caller answers 503: nothing is lost silently)."""


class FeedbackLog:
    def __init__(self, path: Path, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.path = path
        self._log = RotatingLog(path, max_bytes)
        self._lock = threading.Lock()

    def write(
        self, service_id: str, clinic: str, request_id: str, items: list[FeedbackItem]
    ) -> None:
        received = utc_timestamp()
        lines = [
            orjson.dumps(
                {
                    "received": received,
                    "service": service_id,
                    "clinic": clinic,
                    "request_id": request_id,
                    "card": item.card,
                    "outcome": item.outcome,
                    "override_system": item.overrideReason.reason.system
                    if item.overrideReason and item.overrideReason.reason
                    else None,
                    "override_code": item.overrideReason.reason.code
                    if item.overrideReason and item.overrideReason.reason
                    else None,
                    "accepted_suggestions": len(item.acceptedSuggestions),
                    "commented": bool(item.overrideReason and item.overrideReason.userComment),
                    "outcome_time": item.outcomeTimestamp.isoformat(),
                }
            ).decode()
            for item in items
        ]
        try:
            with self._lock:
                self._log.write(lines)
        except OSError as exc:
            raise FeedbackWriteError(type(exc).__name__) from None
