"""Cards from a score: the risk in one sentence, the drivers and the alliance focus in Markdown.

A card renders what the scorer returned (:class:`models.results.RiskScore`) and, when asked,
the largest falls in risk that :func:`models.whatif.what_if` found, each stated as the model's
association and never as a cause. The texts quote ratings, counts and session numbers, never
dates or identifiers (the scorer's own texts already follow that rule).

Indicator by band (CDS Hooks 2.0 "Card attributes"): ``low`` -> ``info``, ``moderate`` ->
``warning``, ``high`` -> ``critical``. A low-risk patient gets no card unless
``cds_low_risk_card`` asks for an info card.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from models.results import RiskBand, RiskScore
from models.whatif import Scenario
from service.cds.schemas import Card, Coding, Indicator, Source
from service.fhir.codes import CANONICAL_BASE

INDICATOR: dict[RiskBand, Indicator] = {"low": "info", "moderate": "warning", "high": "critical"}
#: What each band asks of the clinician (the product's intended use: a check-in or outreach).
ASK: dict[RiskBand, str] = {
    "low": "no action suggested",
    "moderate": "consider an alliance check-in",
    "high": "check in on the alliance and plan outreach",
}
INTENDED_USE = (
    "Intended use: prompting an alliance check-in or outreach. Never for discharge or "
    "rationing care."
)
#: The override reasons a clinician can pick when dismissing a card; the system is this
#: service's own code system, beside the FHIR edge's (docs/cds-hooks.md lists the codes).
OVERRIDE_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/cds-override-reason"
OVERRIDE_REASONS: tuple[tuple[str, str], ...] = (
    ("already-addressed", "Alliance already being addressed"),
    ("recent-check-in", "Alliance checked in with the client recently"),
    ("clinical-judgement", "Clinical judgement differs from the model"),
    ("record-incomplete", "Appointments or ratings in the record are incomplete"),
    ("not-relevant-now", "Not relevant for this client now"),
)
#: CDS Hooks 2.0: the summary is a "<140-character" string, so 139 at most.
SUMMARY_MAX = 139


def override_reasons() -> list[Coding]:
    return [Coding(system=OVERRIDE_SYSTEM, code=c, display=d) for c, d in OVERRIDE_REASONS]


def summary_of(score: RiskScore) -> str:
    """One sentence under 140 characters: band, probability and what it asks."""
    text = (
        f"{score.risk_band.capitalize()} risk of dropping out of therapy "
        f"({score.probability:.0%}): {ASK[score.risk_band]}"
    )
    return text[:SUMMARY_MAX]


def detail_of(score: RiskScore, scenarios: Sequence[Scenario], model_label: str) -> str:
    """GitHub-flavoured Markdown: the drivers, the alliance focus and the what-if scenarios."""
    e = score.explanation
    lines = [
        f"**Dropout risk {score.probability:.0%} ({score.risk_band})** at session "
        f"{score.landmark}; base rate {e.base_probability:.0%}. Model: {model_label}.",
        "",
        "**What drives it**",
        "",
    ]
    lines += [f"- **{d.label}** ({d.direction}): {d.text}" for d in e.drivers]
    focus = [d for d in e.drivers if d.focus]
    if focus:
        lines += ["", "**Alliance focus**", ""]
        lines += [f"- **{d.label}**: {d.focus}" for d in focus]
    if scenarios:
        lines += ["", "**What the model associates with a lower risk** (not a cause)", ""]
        lines += [f"- {s.text}" for s in scenarios]
    lines += ["", f"_{INTENDED_USE}_"]
    return "\n".join(lines)


def card_for(
    score: RiskScore,
    scenarios: Sequence[Scenario],
    *,
    model_label: str,
    source_url: str | None,
    low_risk_card: bool,
) -> Card | None:
    """The card of one score, or None for a low risk when no low-risk card is wanted.

    ``scenarios`` are shown as given: pass the largest falls only (never those marked
    ``raises_risk`` nor ``next_attended``, which compares another appointment).
    """
    if score.risk_band == "low" and not low_risk_card:
        return None
    return Card(
        uuid=str(uuid.uuid4()),
        summary=summary_of(score),
        indicator=INDICATOR[score.risk_band],
        detail=detail_of(score, scenarios, model_label),
        source=Source(label=f"alliance-risk model card ({model_label})", url=source_url),
        overrideReasons=override_reasons(),
    )


def top_falls(scenarios: Sequence[Scenario], n: int) -> list[Scenario]:
    """The ``n`` scenarios with the largest fall in risk, among those that lower it now."""
    falls = [
        s for s in scenarios if s.change_pp < 0 and not s.raises_risk and s.kind != "next_attended"
    ]
    return sorted(falls, key=lambda s: s.change_pp)[:n]
