"""Sentences of alliance elements and the overall alliance: trends, ruptures, variability,
levels, cut-offs and the overall focus (models/drivers/alliance.py)."""

from __future__ import annotations

import numpy as np
import pytest

from features.registry import FeatureRegistry, feature_registry
from models.drivers import GENERAL_FOCUS, LOWERS, RAISES
from tests.models.drivers.helpers import ALLIANCE6, SRS, client, describe


def _x(registry: FeatureRegistry, X: np.ndarray, name: str) -> float:
    return float(X[registry.names.index(name)])


def test_falling_goals_quotes_the_ratings_three_rated_sessions_apart() -> None:
    arrays = client(ratings={"goals": [8.6, 8.4, 7.0, 6.1]})
    drivers, _ = describe(arrays, {"goals_slope": 0.5})
    assert len(drivers) == 1  # every other group contributes exactly 0
    d = drivers[0]
    assert (
        d.text == "Clear goals and expectations fell from 8.6 to 6.1 over the last 3 rated sessions"
    )
    assert (d.group, d.label, d.direction) == ("goals", "Clear goals and expectations", RAISES)
    assert d.evidence == {
        "fact": "trend",
        "from": 8.6,
        "to": 6.1,
        "from_session": 1,
        "to_session": 4,
        "rated_sessions": 3,
    }
    assert d.focus == ALLIANCE6.element("goals").focus


def test_trend_counts_rated_sessions_only() -> None:
    # Session 3 was attended without a goals rating and session 4 missed (its rating ignored).
    arrays = client(
        ratings={"goals": [9.0, 8.6, None, 5.0, 8.4, 6.1]},
        attendance=["attended", "attended", "attended", "no_show", "attended", "attended"],
    )
    d = describe(arrays, {"goals_change_prev": 0.4})[0][0]
    assert (
        d.text
        == "Clear goals and expectations fell from 8.4 to 6.1 since the previous rated session"
    )
    d = describe(arrays, {"goals_slope": 0.4})[0][0]
    assert (
        d.text == "Clear goals and expectations fell from 9.0 to 6.1 over the last 3 rated sessions"
    )
    assert (d.evidence["from_session"], d.evidence["to_session"]) == (1, 6)


def test_a_rise_is_not_quoted_as_a_reason_for_risk() -> None:
    arrays = client(ratings={"goals": [6.0, 7.0, 8.0, 8.5]})
    raises = describe(arrays, {"goals_slope": 0.3})[0][0]
    assert "rose" not in raises.text and "fell" not in raises.text
    lowers = describe(arrays, {"goals_slope": -0.3})[0][0]
    assert (
        lowers.text
        == "Clear goals and expectations rose from 6.0 to 8.5 over the last 3 rated sessions"
    )


def test_unrepaired_rupture_names_the_element_and_session() -> None:
    arrays = client(ratings={"trust": [9.0, 9.0, 9.0, 9.0, 6.0, 6.5]})
    registry = feature_registry(ALLIANCE6)
    drivers, X = describe(arrays, {"trust_unrepaired": 0.6})
    assert _x(registry, X, "trust_unrepaired") == 1.0  # the kernel agrees it is open
    d = drivers[0]
    assert d.text == (
        "Trust and rapport rupture at session 5 not yet repaired (dropped from 9.0 to 6.0, latest 6.5)"
    )
    assert "session 5" in d.text and "not yet repaired" in d.text and "Trust and rapport" in d.text
    assert d.evidence["session"] == 5 and d.evidence["repaired"] == 0
    assert d.focus == ALLIANCE6.element("trust").focus


def test_repaired_rupture_is_protective() -> None:
    arrays = client(ratings={"trust": [9.0, 9.0, 9.0, 9.0, 6.0, 9.2]})
    registry = feature_registry(ALLIANCE6)
    drivers, X = describe(arrays, {"trust_has_rupture": -0.2})
    assert _x(registry, X, "trust_unrepaired") == 0.0
    assert drivers[0].text == (
        "Trust and rapport rupture at session 5 was repaired (dropped from 9.0 to 6.0, latest 9.2)"
    )


def test_variability_wording_follows_the_numbers() -> None:
    arrays = client(ratings={"trust": [9.0, 5.0, 9.0, 5.0]})
    d = describe(arrays, {"trust_sd": 0.3})[0][0]
    assert d.text == "Trust and rapport ratings unstable (SD 2.3 points over 4 rated sessions)"
    # A large SD is never called stable: the sentence falls back to the latest rating.
    d = describe(arrays, {"trust_sd": -0.3})[0][0]
    assert "stable" not in d.text
    steady = client(ratings={"trust": [9.0, 9.2, 9.0, 9.1]})
    d = describe(steady, {"trust_mssd": -0.3})[0][0]
    assert d.text == "Trust and rapport ratings stable (SD 0.1 points over 4 rated sessions)"


def test_high_steady_rating_is_worded_protectively() -> None:
    arrays = client(ratings={"trust": [8.0, 9.2, 9.1, 9.0]})
    d = describe(arrays, {"trust_last3_mean": -0.3})[0][0]
    assert d.text == "Trust and rapport rated high and steady (9.1 over the last 3 rated sessions)"
    assert d.direction == LOWERS


@pytest.mark.parametrize(
    ("ratings", "feature", "text"),
    [
        (
            {"empathy": [9.0, 6.0]},
            "alliance_overall_any_element_below_cutoff",
            "Empathy rated 6.0 at session 2, below the element cut-off 8",
        ),
        (
            {e: [10.0] * 3 for e in ALLIANCE6.element_names},
            "alliance_overall_ceiling_streak",
            "Perfect scores (10 on every element) in the last 3 rated sessions, a known warning sign",
        ),
        (
            {e: [9.0, 7.5] for e in ALLIANCE6.element_names},
            "alliance_overall_drop_alert",
            "Overall alliance fell by 1.5 points since the previous rated session (from 9.0 to 7.5)",
        ),
        (
            {e: [8.0, 8.5] for e in ALLIANCE6.element_names},
            "alliance_overall_below_cutoff",
            "Overall alliance rated 8.5 at session 2, below the cut-off 9",
        ),
    ],
)
def test_overall_alliance_rules(ratings, feature: str, text: str) -> None:
    d = describe(client(ratings=ratings), {feature: 0.4})[0][0]
    assert d.text == text
    assert (d.group, d.label) == ("alliance_overall", "Overall alliance")


def test_overall_focus_is_the_strategy_of_the_lowest_element() -> None:
    arrays = client(ratings={"collaboration": [9.0, 6.5], "trust": [9.0, 7.0]})
    d = describe(arrays, {"alliance_overall_last": 0.4})[0][0]
    assert d.focus == ALLIANCE6.element("collaboration").focus
    never = client(attendance=["attended"] * 3, default=None)
    d = describe(never, {"alliance_overall_last": 0.4})[0][0]
    assert d.text == "Overall alliance not rated yet"
    assert d.focus == GENERAL_FOCUS


def test_srs_overall_is_quoted_as_the_total() -> None:
    arrays = client(SRS, ratings={"relationship": [9.0, 7.0]}, default=8.0)
    d = describe(arrays, {"alliance_overall_below_cutoff": 0.5})[0][0]
    # Latest items 7, 8, 8, 8: total 31 of 40, under the SRS cut-off 36.
    assert d.text == "Overall alliance total was 31.0 at session 2, below the cut-off 36"
    assert d.focus == SRS.element("relationship").focus


def test_a_good_early_alliance_is_not_quoted_as_a_reason_for_risk() -> None:
    # The model may push risk up on a high early mean (a later fall from a high start); the
    # sentence must then quote what supports "raises risk", not the good start on its own.
    arrays = client(ratings={"trust": [9.6, 9.6, 9.6, 8.0, 7.0]})
    raises = describe(arrays, {"trust_early_mean": 0.3})[0][0]
    assert raises.direction == RAISES
    assert "averaged 9.6 in appointments 1-3" not in raises.text
    assert raises.evidence["fact"] != "early"
    lowers = describe(arrays, {"trust_early_mean": -0.3})[0][0]
    assert (
        lowers.text == "Trust and rapport averaged 9.6 in appointments 1-3 (a good early alliance)"
    )


def test_a_poor_early_alliance_is_not_quoted_as_protective() -> None:
    arrays = client(ratings={"trust": [5.0, 5.5, 6.0, 9.0, 9.5]})
    lowers = describe(arrays, {"trust_early_mean": -0.3})[0][0]
    assert lowers.direction == LOWERS
    assert lowers.evidence["fact"] != "early"
    raises = describe(arrays, {"trust_early_mean": 0.3})[0][0]
    assert raises.text == "Trust and rapport averaged 5.5 in appointments 1-3, below the cut-off 8"


def test_a_high_rating_is_not_quoted_as_a_reason_for_risk() -> None:
    # Rated at the top of the scale: the model may push the risk up, but "rated 10.0" as the
    # reason reads as the opposite of what a clinician knows; another fact of the group speaks.
    for feature in ("trust_last", "trust_last3_mean"):
        d = describe(client(ratings={"trust": [10.0, 10.0]}), {feature: 0.3})[0][0]
        assert d.direction == RAISES
        assert "10.0" not in d.text, d.text
    # And a low one is not quoted as protective.
    d = describe(client(ratings={"trust": [6.0, 6.0]}), {"trust_last": -0.3})[0][0]
    assert d.direction == LOWERS and "rated 6.0" not in d.text, d.text


def test_a_rating_below_the_clients_recent_mean_says_so() -> None:
    arrays = client(ratings={"trust": [9.8, 9.9, 9.0]})
    d = describe(arrays, {"trust_last": 0.3})[0][0]
    assert d.text == (
        "Trust and rapport rated 9.0 at session 3, below its mean of 9.6 over the last 3 rated "
        "sessions"
    )


def test_a_low_point_is_a_low_point() -> None:
    # One rating is no low point, nor is a lowest rating still above the cut-off.
    for ratings in ([7.0], [9.5, 9.2, 9.4]):
        d = describe(client(ratings={"trust": ratings}), {"trust_min": 0.3})[0][0]
        assert "lowest" not in d.text and "a low of" not in d.text, d.text
    d = describe(client(ratings={"trust": [9.0, 7.0, 7.5]}), {"trust_min": 0.3})[0][0]
    assert d.text == "Trust and rapport reached a low of 7.0 (latest 7.5)"
    # The overall alliance's lowest, 8.96, is below its cut-off 9 and printed so.
    *rest, last = ALLIANCE6.element_names
    ratings = {e: [9.5, 9.0] for e in rest} | {last: [9.5, 8.76]}
    d = describe(client(ratings=ratings), {"alliance_overall_min": 0.3})[0][0]
    assert d.text == "Overall alliance at its lowest so far: 8.96 at session 2"


def test_a_value_below_the_cut_off_never_reads_as_the_cut_off() -> None:
    # The overall alliance is a mean: 8.96 rounds to 9.0, which is not below the cut-off 9.
    *rest, last = ALLIANCE6.element_names
    ratings = {e: [9.0, 8.9, 9.0] for e in rest} | {last: [9.0, 8.9, 8.76]}
    expected = {
        "alliance_overall_early_mean": "Overall alliance averaged 8.95 in appointments 1-3, "
        "below the cut-off 9",
        "alliance_overall_below_cutoff": "Overall alliance rated 8.96 at session 3, below the "
        "cut-off 9",
    }
    for feature, text in expected.items():
        assert describe(client(ratings=ratings), {feature: 0.4})[0][0].text == text
