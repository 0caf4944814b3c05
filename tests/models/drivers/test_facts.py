"""Properties on any history: every driver quotes numbers that are its evidence, and the
evidence is the client's own history recomputed from scratch (models/drivers/facts.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.arrays import SessionArrays
from features.build import landmark_rows, pack_frames
from features.kernels import compute_feature_matrix
from features.profiles import OVERALL, PROFILES, InstrumentProfile, get_profile
from features.registry import YOUNG_AGE_YEARS, feature_registry
from models.drivers import RECENT_APPOINTMENTS, RECENT_RATED, Driver, DriverWriter
from models.drivers.facts import ActivityFacts, RatingFacts
from models.drivers.tables import ACTIVITY_FEATURES, RATING_STATS
from models.drivers.wording import below, rating
from models.explain import Explanation
from tests.features.reference import reference_rated_values
from tests.features.strategies import client_history, random_cohort
from tests.models.drivers.helpers import check_driver, random_explanation

#: Numbers a text quotes that are fixed by its wording, not by the client.
_FIXED = (
    "appointments 1-3",
    f"none in the last {RECENT_APPOINTMENTS}",
    f"{YOUNG_AGE_YEARS:g} years",
)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def _rows_of(e: Explanation, i: int) -> Explanation:
    """The explanation of scored row ``i`` alone."""
    one = slice(i, i + 1)
    return Explanation(
        space=e.space,
        base_logit=e.base_logit[one],
        base_probability=e.base_probability[one],
        feature_contributions=e.feature_contributions[one],
        group_contributions=e.group_contributions[one],
        feature_names=e.feature_names,
        group_names=e.group_names,
        logit=e.logit[one],
        probability=e.probability[one],
    )


def _histories(sessions: pd.DataFrame) -> dict[str, dict[str, list]]:
    """Per client, plain lists sorted by session number (as tests/features/reference.py reads)."""
    out = {}
    for client_id, group in sessions.groupby("client_id", sort=True):
        group = group.sort_values("session_number")
        out[client_id] = {
            "session_number": group["session_number"].astype(int).tolist(),
            "attendance": group["attendance"].tolist(),
            **{
                c: group[c].astype(float).tolist()
                for c in group.columns
                if c.startswith("alliance_")
            },
        }
    return out


def _rated(history: dict[str, list], k_index: int, group: str, profile: InstrumentProfile):
    """Session number -> rated value of ``group`` up to appointment ``k_index``, on the scale the
    texts quote, from the readable reference (:func:`tests.features.reference.
    reference_rated_values`)."""
    end = k_index + 1
    values = reference_rated_values(
        history["attendance"][:end], [history[c][:end] for c in profile.columns], profile
    )
    slot = (*profile.element_names, OVERALL).index(group)
    scale = len(profile.elements) if group == OVERALL and profile.total == "sum" else 1
    return {
        sn: v * scale
        for sn, v in zip(history["session_number"][:end], values[slot], strict=True)
        if not math.isnan(v)
    }


def _check_quotes(d: Driver) -> None:
    """Every number in the text is one of its evidence (or a difference of two it quotes)."""
    ev = d.evidence
    quoted = {abs(float(v)) for v in ev.values() if isinstance(v, (int, float))}
    if ev["fact"] == "drop_alert":
        quoted.add(rating(ev["from"] - ev["to"]))
    if ev["fact"] == "own_mean":
        quoted.add(rating(ev["own_mean"] - ev["latest"]))
    text = d.text
    for fixed in _FIXED:
        text = text.replace(fixed, "")
    for number in _NUMBER.findall(text):
        assert float(number) in quoted, (d.text, ev)


def _check_history(
    d: Driver, history: dict[str, list], k_index: int, profile: InstrumentProfile
) -> None:
    """The sessions and values the evidence names are the client's, recomputed from scratch."""
    ev, fact = d.evidence, d.evidence["fact"]
    attendance = history["attendance"][: k_index + 1]
    if fact == "recent_missed":
        window = attendance[-RECENT_APPOINTMENTS:]
        assert (ev["no_shows"], ev["late_cancellations"]) == (
            window.count("no_show"),
            window.count("late_cancel"),
        )
        assert (ev["no_shows_total"], ev["late_cancellations_total"], ev["appointments_total"]) == (
            attendance.count("no_show"),
            attendance.count("late_cancel"),
            len(attendance),
        )
    if fact == "attended_share":
        assert (ev["attended"], ev["appointments"]) == (
            attendance.count("attended"),
            len(attendance),
        )
    if d.group not in (*profile.element_names, OVERALL):
        return
    series = _rated(history, k_index, d.group, profile)
    sessions = list(series)

    def at(session: int) -> float:
        return rating(series[session])

    if fact in ("trend", "change_prev", "first_to_last", "drop_alert"):
        assert ev["to_session"] == sessions[-1]
        assert (ev["from"], ev["to"]) == (at(ev["from_session"]), at(ev["to_session"]))
        apart = len(sessions) - 1 - sessions.index(ev["from_session"])
        first = len(sessions) - 1  # first_to_last: from the first rated session
        assert apart == {"trend": min(RECENT_RATED, first), "first_to_last": first}.get(fact, 1)
        if fact != "drop_alert":
            assert ev["rated_sessions"] == (len(sessions) if fact == "first_to_last" else apart)
    elif fact in ("level", "cutoff", "own_mean", "low_point"):
        assert ev["session"] == sessions[-1]
        # Below the cut-off, a value never rounds up to it (2 decimals then).
        shown = {at(sessions[-1])}
        if "cutoff" in ev:
            shown.add(below(series[sessions[-1]], ev["cutoff"]))
        assert ev["latest"] in shown
    elif fact == "ceiling":
        assert ev["session"] == sessions[-1]
    elif fact == "rupture" and "session" in ev:
        before = sessions[sessions.index(ev["session"]) - 1]
        assert (ev["from"], ev["to"], ev["latest"]) == (
            at(before),
            at(ev["session"]),
            at(sessions[-1]),
        )
    elif fact in ("n_rated", "variability", "rupture"):
        assert ev["rated_sessions"] == len(sessions)
    elif fact == "element_cutoff" and "element" in ev:
        element = _rated(history, k_index, ev["element"], profile)
        assert ev["session"] == sessions[-1]
        value = element[ev["session"]]
        assert ev["latest"] in (rating(value), below(value, ev["cutoff"]))


def _check_rows(
    out: list[list[Driver]],
    arrays: SessionArrays,
    rows: np.ndarray,
    e: Explanation,
    histories: dict[str, dict[str, list]],
    top: int,
) -> set[str]:
    """Every property of every row's drivers; returns the kinds of facts seen."""
    profile = arrays.profile
    groups = list(e.group_names)
    seen = set()
    for i, drivers in enumerate(out):
        gc = e.group_contributions[i]
        expected = [g for g in np.argsort(-np.abs(gc), kind="stable")[:top] if gc[g] != 0]
        assert [groups.index(d.group) for d in drivers] == expected
        seg = int(arrays.seg_of_row[rows[i]])
        history = histories[arrays.client_id[seg]]
        k_index = int(arrays.rank[rows[i]])
        for d in drivers:
            assert d.contribution == gc[groups.index(d.group)]
            check_driver(d)
            _check_quotes(d)
            _check_history(d, history, k_index, profile)
            seen.add(d.evidence["fact"])
    return seen


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    name=st.sampled_from(sorted(PROFILES)),
    seed=st.integers(0, 2**16),
    top=st.integers(0, 6),
)
def test_any_history_gives_drivers_that_quote_its_numbers(data, name, seed, top) -> None:
    profile = get_profile(name)
    sessions, clients = data.draw(client_history(profile))
    registry = feature_registry(profile, include_covariates=True)
    arrays = pack_frames(sessions, clients, profile)
    rows = landmark_rows(arrays, "all")
    X = compute_feature_matrix(arrays, registry, rows)
    e = random_explanation(registry, rows.shape[0], seed)
    writer = DriverWriter.build(registry, e.group_names)
    out = writer.describe(arrays, rows, X, e, top=top)
    _check_rows(out, arrays, rows, e, _histories(sessions), top)
    for i in range(rows.shape[0]):
        assert writer.describe(arrays, rows[i : i + 1], X[i : i + 1], _rows_of(e, i), top=top) == [
            out[i]
        ]


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("covariates", [False, True])
def test_a_cohort_gives_drivers_that_quote_its_numbers(name: str, covariates: bool) -> None:
    profile = get_profile(name)
    registry = feature_registry(profile, include_covariates=covariates)
    sessions, clients = random_cohort(60, profile, seed=5)  # never-attended, never-rated, gaps
    arrays = pack_frames(sessions, clients, profile)
    rows = landmark_rows(arrays, "all")
    X = compute_feature_matrix(arrays, registry, rows)
    e = random_explanation(registry, rows.shape[0], seed=1)
    writer = DriverWriter.build(registry, e.group_names)
    out = writer.describe(arrays, rows, X, e, top=4)
    seen = _check_rows(out, arrays, rows, e, _histories(sessions), 4)
    assert {"trend", "first_to_last", "level", "rupture", "recent_missed", "n_rated"} <= seen
    # A row alone, and its client alone in its own arrays, give the row's drivers.
    for i in range(0, rows.shape[0], 7):
        one = _rows_of(e, i)
        assert writer.describe(arrays, rows[i : i + 1], X[i : i + 1], one, top=4) == [out[i]]
        seg = arrays.seg_of_row[rows[i]]
        alone = arrays.take_segments(np.array([seg]))
        row = arrays.rank[rows[i : i + 1]]
        assert writer.describe(alone, row, X[i : i + 1], one, top=4) == [out[i]]


def test_facts_end_with_the_feature_statistics_they_read() -> None:
    # The fact engine fills the trailing fields from the feature row, in these orders.
    assert RatingFacts._fields[-len(RATING_STATS) :] == RATING_STATS
    assert ActivityFacts._fields[-len(ACTIVITY_FEATURES) :] == ACTIVITY_FEATURES
