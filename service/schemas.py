"""Request and response schemas of the ``/v1`` API.

Inputs follow the data contract (docs/data-contract.md): a client's episode with its list of
scheduled appointments. Ratings are keyed by the element names of the served model's instrument
profile (``alliance6``: empathy, acceptance, trust, goals, collaboration, communication), so the
same schema serves every profile; the profile-dependent rules (which elements, which scale) run
in the scorer and report with the validator's wording.

Responses are the scorer's own result objects (:mod:`models.results`) with the request's
envelope: FastAPI validates and documents them, and pydantic serialises them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator
from typing_extensions import TypedDict

from features.contract import AGE_MAX, AGE_MIN, SESSION_NUMBER_MAX
from models.results import RiskScore
from models.whatif import WhatIf

#: The contract's attendance codes (a test keeps them equal to features.contract).
Attendance = Literal["attended", "no_show", "late_cancel", "cancelled", "rescheduled"]
#: Identifiers: 1-128 characters, none of them a control character.
ID_MAX_LENGTH = 128
_ID_CHARS = r"[^\x00-\x1f]+"
Identifier = Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=f"^{_ID_CHARS}$")
#: Free-text audit fields (gender, referral source).
TEXT_MAX_LENGTH = 64
#: A rating: a finite JSON number (NaN and infinities are refused), or null for "not rated".
#: Strict: ``true`` or ``"8"`` is not a rating (lax mode would score them as 1.0 and 8.0).
Rating = Annotated[float, Field(strict=True, allow_inf_nan=False)] | None

_RATINGS_EXAMPLE = {
    "empathy": 8.5,
    "acceptance": 9.0,
    "trust": 8.0,
    "goals": 7.5,
    "collaboration": 8.0,
    "communication": 8.5,
}


class SessionIn(TypedDict):
    """One scheduled appointment.

    A TypedDict rather than a model: a 1,000-client batch holds some 12,000 appointments, and
    validating them into plain dicts costs a fraction of building as many model objects.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    session_number: Annotated[
        int,
        Field(
            strict=True,
            ge=1,
            le=SESSION_NUMBER_MAX,
            description="Order of the appointment in the episode (1, 2, ...).",
        ),
    ]
    session_date: Annotated[date, Field(description="ISO date of the appointment.")]
    attendance: Attendance
    ratings: NotRequired[
        Annotated[
            dict[str, Rating],
            Field(
                description="Alliance ratings of this appointment keyed by element name of the "
                "model's instrument profile (see GET /v1/model); omit or null when not rated. "
                "Only attended appointments carry ratings.",
                examples=[_RATINGS_EXAMPLE],
            ),
        ]
    ]


def _example_sessions() -> list[dict[str, Any]]:
    days = ["2026-09-01", "2026-09-08", "2026-09-15", "2026-09-22", "2026-09-29", "2026-10-06"]
    attendance = ["attended", "attended", "no_show", "attended", "attended", "no_show"]
    goals = [8.6, 8.4, None, 7.0, 6.1, None]
    out = []
    for i, (d, a, g) in enumerate(zip(days, attendance, goals, strict=True)):
        ratings = {} if g is None else {**_RATINGS_EXAMPLE, "goals": g, "trust": 8.0 - 0.5 * i}
        out.append(
            {"session_number": i + 1, "session_date": d, "attendance": a, "ratings": ratings}
        )
    return out


RISK_REQUEST_EXAMPLE: dict[str, Any] = {
    "client_id": "c-000123",
    "clinic_id": "clinic-a",
    "therapist_id": "t-07",
    "intake_date": "2026-08-28",
    "age": 23,
    "sessions": _example_sessions(),
}


class RiskRequest(BaseModel):
    """One client's episode of care: client fields of the contract and the appointments so far."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [RISK_REQUEST_EXAMPLE]}
    )

    client_id: str = Identifier
    clinic_id: str = Identifier
    therapist_id: str = Identifier
    intake_date: date = Field(description="ISO date of intake (required by the data contract).")
    age: int | None = Field(
        None, strict=True, ge=AGE_MIN, le=AGE_MAX, description="Age in whole years."
    )
    gender: str | None = Field(
        None, max_length=TEXT_MAX_LENGTH, description="Audit only; never a model input."
    )
    referral_source: str | None = Field(
        None, max_length=TEXT_MAX_LENGTH, description="Audit only; never a model input."
    )
    sessions: list[SessionIn] = Field(
        min_length=1,
        max_length=SESSION_NUMBER_MAX,
        description="Scheduled appointments, any order.",
    )


@dataclass(frozen=True)
class InvalidItem:
    """A batch item that is not a valid RiskRequest: pydantic's errors, without the input."""

    errors: tuple[dict[str, Any], ...]


def _item_or_errors(value: Any, handler: Any) -> Any:
    try:
        return handler(value)
    except ValidationError as exc:
        return InvalidItem(
            tuple(dict(e) for e in exc.errors(include_input=False, include_url=False))
        )


if TYPE_CHECKING:
    BatchClient = RiskRequest | InvalidItem
else:
    # Each item is validated on its own: a bad one becomes an InvalidItem (reported in its slot
    # of the response) instead of failing the batch. The documented schema is RiskRequest's.
    BatchClient = Annotated[RiskRequest, WrapValidator(_item_or_errors)]


class BatchRequest(BaseModel):
    """Up to ``max_batch`` clients (default 1,000). Each item is checked on its own: a bad item
    is reported in its slot of the response and does not fail the batch."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"clients": [RISK_REQUEST_EXAMPLE]}]}
    )

    clients: list[BatchClient] = Field(min_length=1, description="RiskRequest objects.")


class ModelRef(BaseModel):
    name: str
    version: str
    alias: str | None = None


@dataclass(frozen=True, slots=True)
class RiskResponse(RiskScore):
    """A client's calibrated, explained dropout risk, with the model and request it came from."""

    model: ModelRef
    """The model version that scored."""
    request_id: str
    """The request's id (also the X-Request-ID header); quote it to the operator."""

    @classmethod
    def of(cls, score: RiskScore, model: ModelRef, request_id: str) -> RiskResponse:
        result = {f.name: getattr(score, f.name) for f in fields(RiskScore)}
        return cls(**result, model=model, request_id=request_id)


@dataclass(frozen=True, slots=True)
class WhatIfResponse(WhatIf):
    """A client's current risk and the model's risk under plausible changes to the history,
    with the model and request it came from."""

    model: ModelRef
    """The model version that scored every scenario."""
    request_id: str
    """The request's id (also the X-Request-ID header); quote it to the operator."""

    @classmethod
    def of(cls, result: WhatIf, model: ModelRef, request_id: str) -> WhatIfResponse:
        values = {f.name: getattr(result, f.name) for f in fields(WhatIf)}
        return cls(**values, model=model, request_id=request_id)


class Problem(BaseModel):
    loc: list[str | int] = Field(description="Path of the offending field.")
    reason: str


class ErrorResponse(BaseModel):
    """RFC 9457 problem details (``application/problem+json``), with the request id and, for
    422, the problems found (at most 20; ``more_errors`` counts the rest)."""

    type: str = Field("about:blank", description="Always about:blank: the status says it all.")
    title: str = Field(description="The HTTP status phrase.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong, in a fixed wording; never request data.")
    request_id: str = Field(description="Also the X-Request-ID header; quote it to the operator.")
    errors: list[Problem] = Field(default_factory=list)
    more_errors: int = Field(0, ge=0, description="Problems found but not listed in errors.")


class BatchItem(BaseModel):
    index: int = Field(description="Position of the client in the request.")
    status: Literal["ok", "error"]
    result: RiskResponse | None = None
    errors: list[Problem] | None = Field(
        None,
        description="At most 20 problems of this item, and at most 200 over the whole batch "
        "(in item order): an item past that budget lists none and counts them in more_errors.",
    )
    more_errors: int | None = Field(None, ge=0, description="Problems not listed in errors.")


class BatchResponse(BaseModel):
    model: ModelRef
    request_id: str
    scored: int
    failed: int
    items: list[BatchItem]


class ModelInfo(BaseModel):
    model: ModelRef
    trained_at: str | None
    profile: str
    elements: list[str]
    scale: tuple[float, float]
    metrics: dict[str, float]
    risk_bands: dict[str, float | str]
    feature_groups: dict[str, list[str]]
    explanation_space: str
    simulated: bool
    loaded_at: datetime
    model_card: str | None


class ReloadResponse(BaseModel):
    result: Literal["loaded", "unchanged", "refused", "registry_unreachable", "no_champion"]
    model: ModelRef | None = Field(description="The model serving after the attempt.")
    detail: str | None = None


class Readiness(BaseModel):
    ready: bool
    model: ModelRef | None
    registry: Literal["ok", "unreachable", "unknown"]
    last_reload: str | None = Field(description="Result of the last reload attempt.")
    detail: str | None = None
