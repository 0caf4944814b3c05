"""Request and response schemas of the ``/v1`` API.

Inputs follow the data contract (docs/data-contract.md): a client's episode with its list of
scheduled appointments. Ratings are keyed by the element names of the served model's instrument
profile (``alliance6``: empathy, acceptance, trust, goals, collaboration, communication), so the
same schema serves every profile; the profile-dependent checks (which elements, which scale)
run against the loaded model and report with the validator's wording.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from features.validation import AGE_MAX, AGE_MIN, SESSION_NUMBER_MAX

#: The contract's attendance codes (a test keeps them equal to features.contract).
Attendance = Literal["attended", "no_show", "late_cancel", "cancelled", "rescheduled"]
RiskBand = Literal["low", "moderate", "high"]
#: Identifiers: 1-128 characters, none of them a control character.
ID_MAX_LENGTH = 128
_ID_CHARS = r"[^\x00-\x1f]+"
Identifier = Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=f"^{_ID_CHARS}$")
#: Free-text audit fields (gender, referral source).
TEXT_MAX_LENGTH = 64

_RATINGS_EXAMPLE = {
    "empathy": 8.5,
    "acceptance": 9.0,
    "trust": 8.0,
    "goals": 7.5,
    "collaboration": 8.0,
    "communication": 8.5,
}


class SessionIn(BaseModel):
    """One scheduled appointment."""

    model_config = ConfigDict(extra="forbid")

    session_number: int = Field(
        ge=1,
        le=SESSION_NUMBER_MAX,
        description="Order of the appointment in the episode (1, 2, ...).",
    )
    session_date: date = Field(description="ISO date of the appointment.")
    attendance: Attendance
    ratings: dict[str, float | None] = Field(
        default_factory=dict,
        description="Alliance ratings of this appointment keyed by element name of the model's "
        "instrument profile (see GET /v1/model); omit or null when not rated. Only attended "
        "appointments carry ratings.",
        examples=[_RATINGS_EXAMPLE],
    )


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
    intake_date: date | None = Field(None, description="ISO date of intake.")
    age: int | None = Field(None, ge=AGE_MIN, le=AGE_MAX, description="Age in years.")
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


class BatchRequest(BaseModel):
    """Up to ``max_batch`` clients (default 1,000). Each item is checked on its own: a bad item
    is reported in its slot of the response and does not fail the batch."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"clients": [RISK_REQUEST_EXAMPLE]}]}
    )

    clients: list[dict[str, Any]] = Field(
        min_length=1,
        description="RiskRequest objects.",
    )


class _ValidBatch(BaseModel):
    """The happy path of a batch body: every item a valid RiskRequest."""

    model_config = ConfigDict(extra="forbid")
    clients: list[RiskRequest] = Field(min_length=1)


_VALID_BATCH = TypeAdapter(_ValidBatch)


# -- the fast path (batches and single clients) -------------------------------------------------
# msgspec mirrors of SessionIn and RiskRequest. msgspec decodes a valid 1,000-client body about 3x
# faster than pydantic (21 against 71 ms, measured on the benchmark's body) because it builds plain
# slotted objects. It is only a fast path: a body it refuses goes to pydantic, which then accepts
# it (pydantic's lax mode takes more, e.g. "3" for 3) or reports every problem in its item.
# So these classes must never accept what pydantic refuses, and must give the same values:
# tests/service/test_schemas_fast.py holds both (the constraints compared through the two JSON
# schemas, and the two decoders on generated bodies).
# The identifier pattern ends in \Z: pydantic's regex engine (Rust) reads $ as the end of the
# text, Python's re (which msgspec uses) also lets $ match before a final newline.
_FastId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH, pattern=f"^{_ID_CHARS}\\Z")
]
_FastText = Annotated[str, msgspec.Meta(max_length=TEXT_MAX_LENGTH)]


class SessionStruct(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One appointment decoded by the fast path (fields as :class:`SessionIn`)."""

    session_number: Annotated[int, msgspec.Meta(ge=1, le=SESSION_NUMBER_MAX)]
    session_date: date
    attendance: Attendance
    ratings: dict[str, float | None] = {}


class EpisodeStruct(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A client's episode decoded by the fast path (fields as :class:`RiskRequest`)."""

    client_id: _FastId
    clinic_id: _FastId
    therapist_id: _FastId
    sessions: Annotated[
        list[SessionStruct], msgspec.Meta(min_length=1, max_length=SESSION_NUMBER_MAX)
    ]
    intake_date: date | None = None
    age: Annotated[int, msgspec.Meta(ge=AGE_MIN, le=AGE_MAX)] | None = None
    gender: _FastText | None = None
    referral_source: _FastText | None = None


class _BatchStruct(msgspec.Struct, forbid_unknown_fields=True):
    clients: Annotated[list[EpisodeStruct], msgspec.Meta(min_length=1)]


_FAST_BATCH = msgspec.json.Decoder(_BatchStruct)

#: A client's episode and an appointment as the scoring code reads them: the pydantic model or
#: its fast-path twin.
Episode = RiskRequest | EpisodeStruct
Appointment = SessionIn | SessionStruct


_FAST_ONE = msgspec.json.Decoder(EpisodeStruct)


def parse_request(raw: bytes) -> Episode:
    """One client's body (``POST /v1/risk``), decoded by msgspec when it accepts it, else by
    pydantic-core, which accepts what msgspec is too strict for or raises
    ``pydantic.ValidationError`` naming every problem (5 against 12 us for the benchmark's
    12-appointment body)."""
    try:
        return _FAST_ONE.decode(raw)
    except (msgspec.MsgspecError, ValueError):  # ValueError: e.g. invalid UTF-8 in a string
        pass
    return RiskRequest.model_validate_json(raw)


def parse_valid_batch(raw: bytes) -> list[RiskRequest] | list[EpisodeStruct]:
    """The clients of a batch body in which every item is valid.

    Decoded by msgspec when it accepts the body (see above), else by pydantic-core straight from
    the bytes (half the time of ``json.loads`` and then validating the dicts).

    Raises ``pydantic.ValidationError`` if any item is invalid; the route then checks the items
    one by one to report each in its own slot.
    """
    try:
        return _FAST_BATCH.decode(raw).clients
    except (msgspec.MsgspecError, ValueError):  # ValueError: e.g. invalid UTF-8 in a string
        pass
    return _VALID_BATCH.validate_json(raw).clients


class ModelRef(BaseModel):
    name: str
    version: str
    alias: str | None = None


class GroupContribution(BaseModel):
    group: str = Field(description="Alliance element, alliance_overall, attendance, engagement "
                       "or client.")  # fmt: skip
    label: str = Field(description="Clinician name of the group.")
    contribution: float = Field(description="Signed; positive raises the risk. In `space`.")


class Driver(BaseModel):
    group: str
    label: str
    contribution: float
    direction: Literal["raises risk", "lowers risk"]
    text: str = Field(description="What drives the risk, in clinician language, with numbers.")
    evidence: dict[str, float | int | str | None] = Field(description="The numbers behind text.")
    focus: str | None = Field(
        None, description="Alliance-building strategy for alliance drivers (null otherwise)."
    )


class FeatureContribution(BaseModel):
    feature: str
    group: str
    value: float | None = Field(description="Feature value (null: undefined by design).")
    contribution: float


class ExplanationOut(BaseModel):
    space: str = Field(description="Units of base_value, contributions and output_value.")
    base_value: float = Field(description="Where every explanation starts, in `space`.")
    base_probability: float = Field(description="The population base rate, as a probability.")
    output_value: float = Field(
        description="base_value + sum of contributions, exactly: the model output in `space`."
    )
    contributions: list[GroupContribution] = Field(description="Every group, signed.")
    drivers: list[Driver] = Field(description="The top 3 groups in clinician language.")
    features: list[FeatureContribution] = Field(
        description="Raw per-feature contributions, the 10 largest by magnitude, for audit."
    )


class RiskResponse(BaseModel):
    client_id: str
    landmark: int = Field(description="Number of scheduled appointments the risk is based on.")
    probability: float = Field(ge=0, le=1, description="Calibrated probability of dropout.")
    risk_band: RiskBand
    model: ModelRef
    scored_at: datetime
    request_id: str
    explanation: ExplanationOut


class Problem(BaseModel):
    loc: list[str | int] = Field(description="Path of the offending field.")
    reason: str


class ErrorResponse(BaseModel):
    detail: str
    request_id: str
    errors: list[Problem] = Field(default_factory=list)


class BatchItem(BaseModel):
    index: int = Field(description="Position of the client in the request.")
    status: Literal["ok", "error"]
    result: RiskResponse | None = None
    errors: list[Problem] | None = None


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
    risk_bands: dict[str, float]
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
