"""What-if: how the model's risk would change under plausible changes to a client's history.

Each scenario is a modified copy of the client's episode, scored by the same
:meth:`models.scorer.Scorer.score` as the real one (all scenarios of all clients in one call):
there is no second model and no second feature path. The scenarios:

- ``element_recovers`` (one per alliance element): the element's rating at the latest rated
  session is raised to the client's own best rating of it so far or to the clinic's typical
  level at that appointment number, whichever is lower (issue 23). The typical level is the
  median rating in the model's training data (:class:`models.reference.TypicalLevels`: the
  clinic's own where it had at least ``min_clients`` clients rating the element there, else the
  all-clinics median). A model without a reference profile (trained before it existed) has no
  typical levels: there the client's own best is the only target, and ``notes`` says so.
- ``rupture_repaired``: every element rated at the latest rated session whose most recent
  rupture is still open (the features' ``<element>_unrepaired``, :mod:`features.kernels`) is
  rated there at the level it dropped from; after a decline over several sessions that leaves an
  earlier drop open, so the rating is raised again to the level before that one, until the
  scenario's own features say no rupture of a repaired element is open. Earlier appointments
  never change.
- ``next_attended``: one attended appointment is appended after the last one, on the last date
  plus the client's typical interval (the median gap between appointments, at least one day;
  weekly when there is only one appointment), with every element's latest rating carried
  forward. The landmark moves on by one. Not offered after the contract's largest session
  number.
- ``no_shows_stop``: every no-show is recoded as attended, rated as the client's latest rated
  session before it (unrated when there is none), so no rating changes by the recoding.

Every value stays plausible: ratings are ones the client has given or, for a recovery, a
clinic's typical level below the client's own best (so within the scale), and no date is earlier
than the last appointment. What the model shows is an association in the
training data, not a promise that the change would cause the risk to fall: every sentence says so.
If an improvement raises the model's risk by at least the 0.1 percentage point the sentence
shows (the model is not monotone there), the scenario is kept, marked ``raises_risk`` and its
sentence says so, instead of being hidden. ``next_attended`` is the risk at a later appointment,
a different quantity from the risk now: its sentence says so and it is never marked. Elements
not rated at the latest rated session get no recovery or repair, and ``notes`` names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

import numpy as np
from pydantic import ConfigDict

from features import contract
from features.episodes import Episodes
from models.results import ContractProblem, RiskBand
from models.scorer import Scorer
from models.scoreset import ScoreSet

ScenarioKind = Literal["element_recovers", "rupture_repaired", "next_attended", "no_shows_stop"]

#: Said by every scenario sentence: the model's association, not a promise of cause.
ASSOCIATION = (
    "This is what the model associates with such a history, not a promise that the change "
    "would cause it."
)
NOT_MONOTONE = (
    "The model gives a higher risk for this improvement: it is not monotone here, so do not "
    "read this scenario as advice."
)
#: Said by every ``next_attended`` sentence: it compares the risk at another appointment.
LATER_APPOINTMENT = (
    "That is the risk at a later appointment, not the risk now, so the difference is not what "
    "attending changes."
)
#: Note when elements have no rating at the latest rated session (``{elements}``: labels).
NOT_RATED_LATEST = (
    "No recovery or rupture scenario for {elements}: not rated at the latest rated session, so "
    "there is no current rating to work from."
)
#: Most rounds of raising a repaired rating until the features say its rupture is closed.
MAX_REPAIR_ROUNDS = 64
#: Notes of every response: what the recovery targets are (models without typical levels).
OWN_BEST_ONLY = (
    "Recovery targets are the client's own best ratings so far: this model holds no clinic "
    "reference levels per landmark, so the clinic's typical level is not used."
)
#: The same note for models with typical levels (``{n}``: the fewest clients for a clinic's own).
LOWER_OF_BEST_AND_CLINIC = (
    "Recovery targets are the client's own best rating so far or the clinic's typical level at "
    "that appointment, whichever is lower. The typical level is the median rating in the "
    "model's training data: the clinic's own where at least {n} of its clients were rated "
    "there, otherwise the median of all clinics."
)
#: Interval of the appended appointment when the client has only one appointment (days).
DEFAULT_INTERVAL_DAYS = 7

#: Attribute docstrings become the field descriptions of the API's schema.
DOCUMENTED = ConfigDict(use_attribute_docstrings=True)
_ATTENDED = contract.ATTENDANCE_CODES.index(contract.ATTENDED)
_NO_SHOW = contract.ATTENDANCE_CODES.index(contract.NO_SHOW)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One modified history and the model's risk for it."""

    __pydantic_config__ = DOCUMENTED

    kind: ScenarioKind
    """``element_recovers``, ``rupture_repaired``, ``next_attended`` or ``no_shows_stop``."""
    element: str | None
    """The alliance element changed (``element_recovers`` only)."""
    landmark: int
    """Session number the scenario is scored at (one more than now for ``next_attended``)."""
    probability: float
    """The model's calibrated probability of dropout for the modified history."""
    change_pp: float
    """probability minus the current probability, in percentage points (negative: lower)."""
    raises_risk: bool
    """True when an improvement raises the model's risk (the model is not monotone there)."""
    text: str
    """One sentence in clinician language, saying it is an association and not a promise."""


@dataclass(frozen=True, slots=True)
class WhatIf:
    """A client's current risk and how it would change in each plausible scenario."""

    __pydantic_config__ = DOCUMENTED

    client_id: str
    """The caller's client identifier, echoed."""
    clinic_id: str | None
    """The clinic of the episode, echoed."""
    therapist_id: str | None
    """The therapist of the episode, echoed."""
    landmark: int
    """Session number of the appointment the current risk is computed at (the latest)."""
    probability: float
    """The current calibrated probability of dropout (as POST /v1/risk returns it)."""
    risk_band: RiskBand
    """The current risk band."""
    scored_at: datetime
    """When the scores were computed (UTC)."""
    scenarios: tuple[Scenario, ...]
    """The scenarios that change something, sorted by change (largest fall first)."""
    notes: tuple[str, ...]
    """What the scenarios rest on and where the model is not monotone."""


@dataclass(frozen=True)
class _History:
    """One episode's appointments in session order (copies)."""

    session_number: np.ndarray
    day: np.ndarray
    attendance: np.ndarray
    ratings: np.ndarray  # (n_elements, n_appointments)

    def rated(self) -> np.ndarray:
        """``(n_elements, n)``: where an element is rated (attended and finite)."""
        return np.isfinite(self.ratings) & (self.attendance == _ATTENDED)

    def with_ratings(self, ratings: np.ndarray) -> _History:
        return _History(self.session_number, self.day, self.attendance, ratings)


@dataclass(frozen=True)
class _Spec:
    """A scenario before it is scored."""

    kind: ScenarioKind
    element: str | None
    history: _History
    text: str  # a format string with {p} and {change}
    last_rated: int = -1  # rupture_repaired: the appointment whose ratings are raised


def what_if(
    scorer: Scorer, episodes: Episodes, *, scored_at: datetime | None = None
) -> list[WhatIf | tuple[ContractProblem, ...] | None]:
    """Current risk and scenarios for each episode, scored by ``scorer`` in one call.

    Parameters
    ----------
    scorer : Scorer
        The model; every probability comes from its :meth:`~models.scorer.Scorer.score`.
    episodes : Episodes
        Client fields and appointments on the model's profile, each episode's appointments
        contiguous (as :meth:`~features.episodes.Episodes.from_columns` callers build them).
    scored_at : datetime, optional
        Time stamp of the results; default now (UTC).

    Returns
    -------
    list
        Per episode, in order: its :class:`WhatIf`, the contract problems that refused it (as
        :meth:`~models.scorer.Scorer.score` reports them), or None when it has no appointment.
    """
    current = scorer.score(episodes, scored_at=scored_at)
    outcomes = list(current.by_episode())
    row_of = {int(ep): i for i, ep in enumerate(current.episode.tolist())}
    specs, unrated = _specs(scorer, episodes, current)
    probability: dict[int, float] = {}
    landmark: dict[int, int] = {}
    if specs:
        scored = scorer.score(_episodes_of(episodes, specs), scored_at=current.scored_at)
        if scored.problems:
            raise RuntimeError("a what-if scenario broke the data contract")
        probability = dict(zip(scored.episode.tolist(), scored.probability.tolist(), strict=True))
        landmark = dict(zip(scored.episode.tolist(), scored.landmark.tolist(), strict=True))
    found: dict[int, list[Scenario]] = {}
    for j, (ep, spec) in enumerate(specs):
        found.setdefault(ep, []).append(
            _scenario(spec, probability[j], landmark[j], float(current.probability[row_of[ep]]))
        )
    out: list[WhatIf | tuple[ContractProblem, ...] | None] = []
    for ep, outcome in outcomes:
        if outcome is None or isinstance(outcome, tuple):
            out.append(outcome)
            continue
        scenarios = sorted(found.get(ep, []), key=lambda s: s.change_pp)
        notes = [_recovery_note(scorer)]
        if unrated.get(ep):
            notes.append(NOT_RATED_LATEST.format(elements=", ".join(unrated[ep])))
        if n := sum(s.raises_risk for s in scenarios):
            notes.append(
                f"In {n} scenario{'s' if n > 1 else ''} the model gives a higher risk for an "
                "improvement: it is not monotone there. They are shown, marked raises_risk."
            )
        out.append(
            WhatIf(
                client_id=outcome.client_id,
                clinic_id=outcome.clinic_id,
                therapist_id=outcome.therapist_id,
                landmark=outcome.landmark,
                probability=outcome.probability,
                risk_band=outcome.risk_band,
                scored_at=outcome.scored_at,
                scenarios=tuple(scenarios),
                notes=tuple(notes),
            )
        )
    return out


def _recovery_note(scorer: Scorer) -> str:
    if scorer.reference is None:
        return OWN_BEST_ONLY
    return LOWER_OF_BEST_AND_CLINIC.format(n=scorer.reference.typical.min_clients)


def _scenario(spec: _Spec, p: float, landmark: int, p_now: float) -> Scenario:
    change = 100.0 * (p - float(p_now))
    # One threshold for the flag and the words: the change as the sentence shows it.
    shown = round(change, 1)
    # next_attended is the risk at a later appointment: not an improvement of the same quantity.
    raises = shown > 0.0 and spec.kind != "next_attended"
    text = spec.text.format(p=f"{p:.0%}", change=_points(shown))
    if spec.kind == "next_attended":
        text = f"{text} {LATER_APPOINTMENT}"
    if raises:
        text = f"{text} {NOT_MONOTONE}"
    return Scenario(spec.kind, spec.element, landmark, p, change, raises, f"{text} {ASSOCIATION}")


def _points(shown: float) -> str:
    if shown == 0.0:
        return "no change"
    word = "lower" if shown < 0 else "higher"
    return f"{abs(shown):.1f} percentage points {word}"


def _specs(
    scorer: Scorer, episodes: Episodes, current: ScoreSet
) -> tuple[list[tuple[int, _Spec]], dict[int, list[str]]]:
    """Every scenario of each episode ``current`` scored and, per episode, the labels of the
    elements not rated at its latest rated session (nothing to recover or repair from)."""
    names = scorer.feature_names
    specs: list[tuple[int, _Spec]] = []
    unrated: dict[int, list[str]] = {}
    for j, ep in enumerate(current.episode.tolist()):
        features = dict(zip(names, current.features[j].tolist(), strict=True))
        h = _history(episodes, ep)
        landmark = int(current.landmark[j])
        specs.extend(
            (ep, s) for s in _scenarios(scorer, h, features, landmark, episodes.clinic_id[ep])
        )
        rated = h.rated()
        last = np.flatnonzero(rated.any(axis=0))
        unrated[ep] = [
            e.label.lower()
            for g, e in enumerate(scorer.profile.elements)
            if not last.size or not rated[g, last[-1]]
        ]
    return _close_ruptures(scorer, episodes, specs), unrated


def _close_ruptures(
    scorer: Scorer, episodes: Episodes, specs: list[tuple[int, _Spec]]
) -> list[tuple[int, _Spec]]:
    """``specs`` with each rupture repair raised until its own features say no rupture is open.

    Raising the latest rating to the level before the most recent drop leaves an earlier drop
    open after a decline over several sessions; each round raises the latest rated ratings to
    the level before the rupture the features now call open (a rating the client gave, so
    within the scale; earlier appointments never change), all pending scenarios in one call.
    """
    out = list(specs)
    pending = [j for j, (_, s) in enumerate(out) if s.kind == "rupture_repaired"]
    names = scorer.feature_names
    for _ in range(MAX_REPAIR_ROUNDS):
        if not pending:
            break
        scored = scorer.score(_episodes_of(episodes, [out[j] for j in pending]))
        still: list[int] = []
        for row, k in enumerate(scored.episode.tolist()):
            j = pending[k]
            ep, spec = out[j]
            h = spec.history
            features = dict(zip(names, scored.features[row].tolist(), strict=True))
            landmark = int(scored.landmark[row])
            ratings = h.ratings.copy()
            rated = h.rated()
            for g, element in enumerate(scorer.profile.elements):
                if not rated[g, spec.last_rated]:
                    continue
                level = _level_before_open_rupture(h, g, features, element.name, landmark)
                if level is not None and level > ratings[g, spec.last_rated]:
                    ratings[g, spec.last_rated] = level
            if not np.array_equal(ratings, h.ratings, equal_nan=True):
                out[j] = (ep, replace(spec, history=h.with_ratings(ratings)))
                still.append(j)
        pending = still
    return out


def _scenarios(
    scorer: Scorer,
    h: _History,
    features: dict[str, float],
    landmark: int,
    clinic_id: str | None = None,
) -> list[_Spec]:
    """The scenarios that change something in history ``h`` of a client of ``clinic_id``,
    scored at ``landmark`` now."""
    profile = scorer.profile
    typical = None if scorer.reference is None else scorer.reference.typical
    eps = 1e-9 * profile.scale_range
    rated = h.rated()
    specs: list[_Spec] = []
    rated_any = rated.any(axis=0)
    last_rated = int(np.flatnonzero(rated_any)[-1]) if rated_any.any() else -1
    if last_rated >= 0:
        session = int(h.session_number[last_rated])
        repaired = h.ratings.copy()
        n_repaired = 0
        for g, element in enumerate(profile.elements):
            values = np.where(rated[g], h.ratings[g], np.nan)
            if not rated[g, last_rated]:
                continue
            now, best = float(values[last_rated]), float(np.nanmax(values))
            clinic = None if typical is None else typical.level(clinic_id, element.name, session)
            target = best if clinic is None else min(best, clinic)
            if target > now + eps:
                ratings = h.ratings.copy()
                ratings[g, last_rated] = target
                where = (
                    "the client's best so far"
                    if target == best
                    else f"the clinic's typical level at session {session}"
                )
                specs.append(
                    _Spec(
                        "element_recovers",
                        element.name,
                        h.with_ratings(ratings),
                        f"If {element.label.lower()} had been rated at {where} "
                        f"({target:g} instead of {now:g} at session {session}), the model's risk "
                        "would be {p} ({change}).",
                    )
                )
            level = _level_before_open_rupture(h, g, features, element.name, landmark)
            if level is not None and level > repaired[g, last_rated] + eps:
                repaired[g, last_rated] = level
                n_repaired += 1
        if n_repaired:
            what = "an open rupture" if n_repaired == 1 else f"{n_repaired} open ruptures"
            specs.append(
                _Spec(
                    "rupture_repaired",
                    None,
                    h.with_ratings(repaired),
                    f"If {what} had been repaired by session {session} (rated there back at "
                    "the level before the ratings dropped), the model's risk would be {p} "
                    "({change}).",
                    last_rated,
                )
            )
    if h.session_number[-1] < contract.SESSION_NUMBER_MAX:
        specs.append(_next_attended(h, rated))
    no_show = h.attendance == _NO_SHOW
    if no_show.any():
        specs.append(_no_shows_attended(h, rated, no_show))
    return specs


def _level_before_open_rupture(
    h: _History, g: int, features: dict[str, float], element: str, landmark: int
) -> float | None:
    """Element ``g``'s rating before the drop of its most recent rupture when the features say
    that rupture is still open, else None (the rupture itself is the features' definition)."""
    if features.get(f"{element}_unrepaired") != 1.0:
        return None
    since = features[f"{element}_sessions_since_rupture"]
    at = np.flatnonzero(h.session_number == landmark - since)
    rated = np.flatnonzero(h.rated()[g])
    before = rated[rated < at[0]] if at.size else rated[:0]
    return float(h.ratings[g, before[-1]]) if before.size else None


def _next_attended(h: _History, rated: np.ndarray) -> _Spec:
    gaps = np.diff(h.day)
    interval = max(1, int(np.median(gaps))) if gaps.size else DEFAULT_INTERVAL_DAYS
    carried = np.full((h.ratings.shape[0], 1), np.nan)
    for g in range(h.ratings.shape[0]):
        where = np.flatnonzero(rated[g])
        if where.size:
            carried[g, 0] = h.ratings[g, where[-1]]
    history = _History(
        np.r_[h.session_number, h.session_number[-1] + 1],
        np.r_[h.day, h.day[-1] + interval],
        np.r_[h.attendance, np.int8(_ATTENDED)].astype(np.int8),
        np.c_[h.ratings, carried],
    )
    return _Spec(
        "next_attended",
        None,
        history,
        f"If the client attends the next appointment (about {interval} days after the last) "
        "and rates it as the last time, the model's risk at that next appointment would be {p} "
        "({change} compared with the risk now).",
    )


def _no_shows_attended(h: _History, rated: np.ndarray, no_show: np.ndarray) -> _Spec:
    ratings = h.ratings.copy()
    for i in np.flatnonzero(no_show).tolist():
        ratings[:, i] = np.nan
        for g in range(ratings.shape[0]):
            where = np.flatnonzero(rated[g, :i])
            if where.size:
                ratings[g, i] = h.ratings[g, where[-1]]
    attendance = np.where(no_show, np.int8(_ATTENDED), h.attendance).astype(np.int8)
    n = int(no_show.sum())
    what = "the no-show" if n == 1 else f"the {n} no-shows"
    return _Spec(
        "no_shows_stop",
        None,
        _History(h.session_number, h.day, attendance, ratings),
        f"If {what} had been attended (rated as the session before), the model's risk would "
        "be {p} ({change}).",
    )


def _history(episodes: Episodes, ep: int) -> _History:
    at = np.flatnonzero(episodes.episode == ep)
    at = at[np.argsort(episodes.session_number[at], kind="stable")]
    return _History(
        episodes.session_number[at].copy(),
        episodes.day[at].copy(),
        episodes.attendance[at].copy(),
        episodes.ratings[:, at].copy(),
    )


def _episodes_of(episodes: Episodes, specs: Sequence[tuple[int, _Spec]]) -> Episodes:
    """One episode per scenario (at least one), with its client's fields."""
    client = np.array([ep for ep, _ in specs], dtype=np.int64)
    histories = [s.history for _, s in specs]
    return Episodes.from_columns(
        episodes.profile,
        client_id=episodes.client_id[client],
        clinic_id=episodes.clinic_id[client],
        therapist_id=episodes.therapist_id[client],
        intake_day=episodes.intake_day[client],
        age=episodes.age[client],
        episode=np.repeat(np.arange(len(specs)), [h.session_number.shape[0] for h in histories]),
        session_number=np.concatenate([h.session_number for h in histories]),
        day=np.concatenate([h.day for h in histories]),
        attendance=np.concatenate([h.attendance for h in histories]),
        ratings=np.concatenate([h.ratings for h in histories], axis=1),
    )
