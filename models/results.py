"""What the scorer returns: frozen result objects, and their one serialisation.

Every edge (the HTTP routes, ``alliance-risk score``, FHIR and CDS Hooks adapters) reads these
objects; none builds its own dict of a score. They are plain frozen dataclasses (cheap to make a
thousand of per batch) that pydantic validates and serialises as they are: the API's response
schemas embed them, and :meth:`RiskScore.to_dict` is pydantic's JSON-mode dump of the same
objects, so the API and the CLI cannot drift apart.

Texts and evidence carry ratings, counts, session numbers and day counts; never dates.
``client_id`` is the caller's own identifier, echoed back to it and never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter

RiskBand = Literal["low", "moderate", "high"]
Direction = Literal["raises risk", "lowers risk"]
RAISES: Direction = "raises risk"
LOWERS: Direction = "lowers risk"
#: JSON-safe numbers (and the ``fact`` kind, a string) quoted by a driver's text.
Evidence = dict[str, float | int | str | None]

#: Attribute docstrings become the field descriptions of the API's schema.
_DOCUMENTED = ConfigDict(use_attribute_docstrings=True)


@dataclass(frozen=True, slots=True)
class GroupContribution:
    """One explanation group's signed share of the risk."""

    __pydantic_config__ = _DOCUMENTED

    group: str
    """Alliance element, ``alliance_overall``, ``attendance``, ``engagement`` or ``client``."""
    label: str
    """Clinician name of the group."""
    contribution: float
    """Signed; positive raises the risk. In the explanation's ``space``."""


@dataclass(frozen=True, slots=True)
class Driver:
    """One reason behind a client's risk, in clinician language, with the numbers behind it."""

    __pydantic_config__ = _DOCUMENTED

    group: str
    """Explanation group (see GroupContribution.group)."""
    label: str
    """Clinician name of the group."""
    contribution: float
    """The group's signed contribution, in the explanation's ``space``."""
    direction: Direction
    """Whether the group raises or lowers this client's risk."""
    text: str
    """What drives the risk, with numbers: e.g. "2 no-shows in the last 3 appointments"."""
    evidence: Evidence
    """The numbers the text quotes, and ``fact``, the kind of sentence. No dates, no ids."""
    focus: str | None = None
    """Alliance-building strategy for alliance drivers (null for attendance and engagement)."""


@dataclass(frozen=True, slots=True)
class FeatureContribution:
    """One model input's value and signed contribution, for audit."""

    __pydantic_config__ = _DOCUMENTED

    feature: str
    """Feature name (docs/features.md)."""
    group: str
    """Its explanation group."""
    value: float | None
    """Feature value (null: undefined by design, e.g. a trend with one rating)."""
    contribution: float
    """Signed, in the explanation's ``space``."""


@dataclass(frozen=True, slots=True)
class RiskExplanation:
    """Why the risk is what it is: signed group contributions that add up exactly, with
    ``base_value``, to ``output_value``, and the top groups in clinician language."""

    __pydantic_config__ = _DOCUMENTED

    space: str
    """Units of base_value, contributions and output_value (``calibrated log-odds`` when the
    logistic of output_value is the probability)."""
    base_value: float
    """Where every explanation starts, in ``space``."""
    base_probability: float
    """The base rate at this row's landmark, as a probability: the calibrated risk of a row
    whose feature contributions are all zero, with the calibrator's landmark intercept for
    this landmark folded in (so it differs between landmarks; base + contributions still equal
    the row's log-odds exactly)."""
    output_value: float
    """base_value plus the sum of contributions, exactly: the model output in ``space``."""
    contributions: tuple[GroupContribution, ...]
    """Every group, signed, in the model's group order."""
    drivers: tuple[Driver, ...]
    """The groups that move this client's risk most (up to 3), largest first."""
    features: tuple[FeatureContribution, ...]
    """The per-feature contributions largest in magnitude (up to 10), for audit."""


@dataclass(frozen=True, slots=True)
class RiskScore:
    """One client's calibrated, explained dropout risk at one landmark."""

    __pydantic_config__ = _DOCUMENTED

    client_id: str
    """The caller's client identifier, echoed."""
    clinic_id: str | None
    """The clinic of the episode, echoed (null when the input had none)."""
    therapist_id: str | None
    """The therapist of the episode, echoed (null when the input had none)."""
    landmark: int
    """Session number of the appointment the risk is computed at (the latest by default)."""
    probability: float
    """Calibrated probability that the client drops out of treatment."""
    risk_band: RiskBand
    """``low``, ``moderate`` or ``high``; thresholds are stored in the model (GET /v1/model)."""
    scored_at: datetime
    """When the score was computed (UTC)."""
    explanation: RiskExplanation
    """Contributions, drivers and feature audit."""

    def to_dict(self) -> dict[str, Any]:
        """The score as JSON-ready Python objects: the one serialisation of a result."""
        return _RISK_SCORE.dump_python(self, mode="json")


@dataclass(frozen=True, slots=True)
class ContractProblem:
    """Why an episode was not scored: one broken rule of the data contract."""

    __pydantic_config__ = _DOCUMENTED

    appointment: int | None
    """Position of the appointment among the input's appointments (None: the whole episode)."""
    column: str
    """Contract column concerned (``session_date``, ``alliance_goals``, ...; ``sessions`` when
    the episode has no appointment)."""
    reason: str
    """The data contract's wording (docs/data-contract.md); never a submitted value."""


#: Built when the module is imported, once: pydantic reads these classes' source for their
#: attribute docstrings, and CPython 3.11's compile() is not safe to run from several threads
#: at once (a first call to_dict from the service's thread pool could be).
_RISK_SCORE: TypeAdapter[RiskScore] = TypeAdapter(RiskScore)
