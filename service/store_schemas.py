"""Request and response schemas of the client store's routes (``/v1/clients/{client_id}/...``).

Appointments and client fields are the ones of ``POST /v1/risk`` (:mod:`service.schemas`):
the same :class:`~service.schemas.SessionIn`, the same field rules, the same 422 problem details
naming the field. A stored client's appointments and fields rebuild exactly the
:class:`~service.schemas.RiskRequest` the one scorer path takes.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from features.contract import SESSION_NUMBER_MAX
from models.results import RiskBand, RiskExplanation
from service.schemas import RISK_REQUEST_EXAMPLE, ModelRef, RiskRequest, SessionIn
from service.store.caseload import utc_instant

_FIELDS = RiskRequest.model_fields

#: An instant with its UTC offset whose UTC equivalent is a representable time, read as UTC:
#: ``0001-01-01T00:00:00+14:00`` is a 422 at the edge, not an OverflowError in a query.
UtcInstant = Annotated[AwareDatetime, AfterValidator(utc_instant)]

_CLIENT_EXAMPLE = {k: RISK_REQUEST_EXAMPLE[k] for k in ("therapist_id", "intake_date", "age")}


class ClientFields(BaseModel):
    """The contract's client fields of an episode: required on a client's first post, and
    corrected by any later post that carries them."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_CLIENT_EXAMPLE]})

    # The very fields of RiskRequest (constraints, descriptions, defaults).
    therapist_id: Annotated[str, _FIELDS["therapist_id"]]
    intake_date: Annotated[date, _FIELDS["intake_date"]]
    age: Annotated[int | None, _FIELDS["age"]]
    gender: Annotated[str | None, _FIELDS["gender"]]
    referral_source: Annotated[str | None, _FIELDS["referral_source"]]


SESSIONS_EXAMPLE: dict[str, Any] = {
    "client": _CLIENT_EXAMPLE,
    "sessions": RISK_REQUEST_EXAMPLE["sessions"][:2],
}


class SessionsRequest(BaseModel):
    """Appointments to add to a stored client, or to correct (same ``session_number``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SESSIONS_EXAMPLE]})

    client: ClientFields | None = Field(
        None,
        description="The client's fields. Required when the client is not stored yet (the "
        "first post); on later posts, replaces the stored fields.",
    )
    sessions: list[SessionIn] = Field(
        min_length=1,
        max_length=SESSION_NUMBER_MAX,
        description="Appointments, any order, each with its session_number: a stored number "
        "is replaced, a new one added. Same shape as POST /v1/risk.",
    )


class OutcomeRequest(BaseModel):
    """How the episode ended; it leaves the open caseload."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"outcome": "dropout", "outcome_date": "2026-11-02"}]},
    )

    outcome: Literal["completed", "dropout"]
    outcome_date: date = Field(description="ISO date the episode ended.")


class OutcomeResponse(BaseModel):
    client_id: str
    outcome: Literal["completed", "dropout"]
    outcome_date: date
    request_id: str


class ScoreEntry(BaseModel):
    """One stored score of the client's history."""

    model: ModelRef
    scored_at: datetime
    landmark: int = Field(description="Session number the risk is computed at.")
    probability: float
    risk_band: RiskBand
    top_driver: str | None = Field(
        description="The main reason: the strongest driver that raises the risk, in clinician "
        'language, or "No factor raises the risk" when every driver lowers it.'
    )
    reason: Literal["ingest", "rescore"] = Field(
        description="ingest: scored when sessions were stored; rescore: by a newly promoted model."
    )


#: Said of each score field of :class:`ClientRisk`.
_UNSCORED = "null while the episode has no score: every appointment of it was deleted."


class ClientRisk(BaseModel):
    """A stored client's latest risk with its explanation and the model version that scored
    it; ``history`` (with ``?history=true``) lists the stored scores, newest first, a page at a
    time. An episode whose appointments were all deleted has no score: its score fields are
    null until an appointment is stored again."""

    client_id: str
    model: ModelRef | None = Field(description=_UNSCORED)
    landmark: int | None = Field(description=_UNSCORED)
    probability: float | None = Field(description=_UNSCORED)
    risk_band: RiskBand | None = Field(description=_UNSCORED)
    scored_at: datetime | None = Field(description=_UNSCORED)
    reason: Literal["ingest", "rescore"] | None = Field(description=_UNSCORED)
    explanation: RiskExplanation | None = Field(description=_UNSCORED)
    outcome: Literal["completed", "dropout"] | None = Field(
        description="null while the episode is open."
    )
    sessions_stored: int
    request_id: str
    history: list[ScoreEntry] | None = Field(
        default=None,
        description="With ?history=true: up to history_limit stored scores, newest first "
        "(every model version side by side); null otherwise.",
    )
    history_next_cursor: str | None = Field(
        default=None,
        description="With ?history=true: pass as ?history_cursor= for the next, older page of "
        "the history; null on its last page.",
    )
