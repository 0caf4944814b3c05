"""Card feedback (``POST /cds-services/{id}/feedback``), kept in the client store.

One ``cds_feedback`` row per feedback item (:mod:`service.store.tables`): when it was received,
the service, the clinic, the request id, the card's uuid, the outcome, the override reason's
system and code, how many suggestions were accepted, whether the clinician wrote a comment, and
when the clinician acted. The free-text ``userComment`` itself is not kept: a clinician may name
the client in it, and feedback is not client data. All items of one call are stored in one
transaction, committed before the call is answered; with the store unreachable the call is a
503 (:class:`~service.store.db.StoreUnavailable`) and nothing is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert

from service.cds.schemas import FeedbackItem
from service.store.db import Store
from service.store.tables import cds_feedback


def feedback_rows(
    service_id: str, clinic: str, request_id: str, items: Sequence[FeedbackItem]
) -> list[dict[str, Any]]:
    """The ``cds_feedback`` rows of one call's items (never the free-text comment)."""
    received = datetime.now(UTC)
    rows = []
    for item in items:
        reason = item.overrideReason.reason if item.overrideReason else None
        rows.append(
            {
                "received_at": received,
                "service_id": service_id,
                "clinic_id": clinic,
                "request_id": request_id,
                "card": item.card,
                "outcome": item.outcome,
                "override_system": reason.system if reason else None,
                "override_code": reason.code if reason else None,
                "accepted_suggestions": len(item.acceptedSuggestions),
                "commented": bool(item.overrideReason and item.overrideReason.userComment),
                "outcome_time": item.outcomeTimestamp.astimezone(UTC),
            }
        )
    return rows


def store_feedback(
    store: Store, service_id: str, clinic: str, request_id: str, items: Sequence[FeedbackItem]
) -> None:
    """Store one call's feedback items in one transaction (raises StoreUnavailable)."""
    rows = feedback_rows(service_id, clinic, request_id, items)
    with store.write() as conn:
        conn.execute(insert(cds_feedback), rows)
