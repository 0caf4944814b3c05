"""The CDS Hooks 2.0 bodies: the hook request, cards, the discovery document and feedback.

Field names are the specification's (camelCase). Inputs ignore members they do not know (the
spec reserves ``extension`` and lets clients add context fields); they never hold more than a
hook's own size limits allow. Nothing here echoes a submitted value in an error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.store_schemas import UtcInstant

Indicator = Literal["info", "warning", "critical"]

#: Longest string field of an input we read (ids, URLs, tokens).
MAX_FIELD = 4096


class Coding(BaseModel):
    """A code from a code system, with the display text a clinician reads."""

    model_config = ConfigDict(extra="ignore")

    system: str | None = Field(None, max_length=MAX_FIELD)
    code: str = Field(min_length=1, max_length=256)
    display: str | None = Field(None, max_length=MAX_FIELD)


class FhirAuthorization(BaseModel):
    """The access token the EHR lends for reading its FHIR server (never logged, never kept)."""

    model_config = ConfigDict(extra="ignore")

    access_token: str = Field(min_length=1, max_length=MAX_FIELD)
    token_type: Literal["Bearer"]
    expires_in: int = Field(ge=0)
    scope: str = Field(max_length=MAX_FIELD)
    subject: str = Field(max_length=MAX_FIELD)
    patient: str | None = Field(None, max_length=MAX_FIELD)


class HookContext(BaseModel):
    """The context of ``patient-view`` and ``appointment-book``: the patient is what we read."""

    model_config = ConfigDict(extra="allow")

    userId: str | None = Field(None, max_length=MAX_FIELD)
    patientId: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    encounterId: str | None = Field(None, max_length=MAX_FIELD)

    @field_validator("patientId")
    @classmethod
    def _not_only_dots(cls, value: str) -> str:
        # A FHIR id of dots alone would make Patient/.. a path step, not a resource.
        if value.strip(".") == "":
            raise ValueError("a patient id cannot be dots alone")
        return value


class HookRequest(BaseModel):
    """A CDS Hooks service call (CDS Hooks 2.0, "Calling a CDS Service")."""

    model_config = ConfigDict(extra="ignore")

    hook: str = Field(min_length=1, max_length=64)
    hookInstance: str = Field(min_length=1, max_length=128)
    fhirServer: str | None = Field(None, max_length=MAX_FIELD)
    fhirAuthorization: FhirAuthorization | None = None
    context: HookContext
    prefetch: dict[str, Any] | None = None


class Source(BaseModel):
    label: str
    url: str | None = None


class Card(BaseModel):
    """One card: the risk, in one sentence, with the drivers in its Markdown detail."""

    uuid: str
    summary: str = Field(max_length=139)  # CDS Hooks 2.0: "<140-character summary"
    indicator: Indicator
    detail: str
    source: Source
    overrideReasons: list[Coding]


class CdsResponse(BaseModel):
    cards: list[Card]


class ServiceDescription(BaseModel):
    hook: str
    title: str
    description: str
    id: str
    prefetch: dict[str, str]
    usageRequirements: str | None = None


class Discovery(BaseModel):
    services: list[ServiceDescription]


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reason: Coding | None = None
    userComment: str | None = Field(None, max_length=MAX_FIELD)


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=128)


class FeedbackItem(BaseModel):
    """What the clinician did with one card."""

    model_config = ConfigDict(extra="ignore")

    card: str = Field(min_length=1, max_length=128)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] = Field(default_factory=list, max_length=50)
    overrideReason: OverrideReason | None = None
    # An instant: a time without its zone, or one past datetime's range in UTC, is refused.
    outcomeTimestamp: UtcInstant


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)
