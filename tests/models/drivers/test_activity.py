"""Sentences of attendance, engagement and client characteristics, and the generic fallback
for a group without sentences (models/drivers/activity.py, sentences.py)."""

from __future__ import annotations

import numpy as np
import pytest

from features.build import landmark_rows
from features.kernels import compute_feature_matrix
from features.registry import Feature, FeatureRegistry, feature_registry
from models.drivers import LOWERS, describe_drivers
from tests.models.drivers.helpers import ALLIANCE6, check_driver, client, describe, explanation


@pytest.mark.parametrize(
    ("attendance", "feature", "text"),
    [
        (
            ["attended", "attended", "no_show", "attended", "no_show"],
            "attendance_no_show_count",
            "2 no-shows in the last 3 appointments",
        ),
        (
            ["attended", "attended", "attended", "no_show", "late_cancel", "attended"],
            "attendance_no_show_rate",
            "1 no-show and 1 late cancellation in the last 3 appointments",
        ),
        (["attended", "no_show"], "attendance_no_show_count", "1 no-show in 2 appointments so far"),
        (
            ["no_show", "attended", "attended", "attended", "attended"],
            "attendance_no_show_count",
            "1 no-show in 5 appointments so far, none in the last 3",
        ),
        (
            ["attended", "no_show", "late_cancel"],
            "attendance_missed_streak",
            "Missed the last 2 appointments in a row (no-shows or late cancellations)",
        ),
        (
            ["attended", "attended", "late_cancel"],
            "attendance_last_late_cancel",
            "Missed the latest appointment (session 3, late cancellation)",
        ),
        (
            ["attended", "no_show", "attended", "attended"],
            "attendance_no_show_first3",
            "1 no-show among appointments 1-3",
        ),
        (
            ["attended", "cancelled", "rescheduled", "cancelled"],
            "attendance_cancelled_count",
            "2 cancelled appointments and 1 rescheduled appointment so far",
        ),
        (
            ["attended", "no_show", "attended", "attended"],
            "attendance_attended_rate",
            "Attended 3 of 4 appointments (75%)",
        ),
    ],
)
def test_attendance_sentences(attendance: list[str], feature: str, text: str) -> None:
    drivers, _ = describe(client(attendance=attendance), {feature: 0.4})
    (d,) = drivers
    assert d.text == text
    assert (d.group, d.label, d.focus) == ("attendance", "Attendance", None)
    check_driver(d)


def test_good_attendance_is_worded_protectively() -> None:
    d = describe(client(attendance=["attended"] * 4), {"attendance_no_show_count": -0.3})[0][0]
    assert d.text == "No no-shows or late cancellations in 4 appointments so far"
    assert d.direction == LOWERS
    arrays = client(attendance=["no_show", "attended", "attended", "attended"])
    d = describe(arrays, {"attendance_no_show_rate": -0.3})[0][0]
    assert (
        d.text == "No no-shows or late cancellations in the last 3 appointments (1 no-show earlier)"
    )


@pytest.mark.parametrize(
    ("attendance", "ratings", "feature", "text"),
    [
        (
            ["attended"] * 3,
            None,
            "engagement_never_rated",
            "No alliance rating recorded yet (3 attended sessions)",
        ),
        (
            ["attended"] * 4,
            {"x": [9.0, None, 9.0, None]},
            "engagement_unrated_share",
            "2 of 4 attended sessions without an alliance rating",
        ),
        (
            ["attended", "no_show", "no_show"],
            None,
            "engagement_days_since_attended",
            "14 days since the last attended session",
        ),
        (
            ["no_show", "no_show"],
            None,
            "engagement_never_attended",
            "No appointment attended yet (2 appointments scheduled)",
        ),
        (["attended", "attended"], None, "engagement_landmark", "Early in therapy: appointment 2"),
        (
            ["attended"] * 3,
            None,
            "engagement_days_since_intake",
            "21 days since intake (3 appointments)",
        ),
    ],
)
def test_engagement_sentences(attendance, ratings, feature: str, text: str) -> None:
    if ratings is None:
        arrays = client(attendance=attendance, default=None)
    else:
        values = ratings["x"]
        arrays = client(attendance=attendance, ratings={e: values for e in ALLIANCE6.element_names})
    d = describe(arrays, {feature: 0.3})[0][0]
    assert d.text == text
    assert (d.group, d.focus) == ("engagement", None)


def test_client_covariates_and_the_generic_fallback() -> None:
    registry = feature_registry(ALLIANCE6, include_covariates=True)
    d = describe(client(attendance=["attended"], age=22.0), {"client_age": 0.2}, registry=registry)[
        0
    ][0]
    assert (d.text, d.label, d.focus) == (
        "Client younger than 25 years",
        "Client characteristics",
        None,
    )
    assert d.evidence["age_years"] == 22
    d = describe(client(attendance=["attended"]), {"client_age_under_25": 0.2}, registry=registry)[
        0
    ][0]
    assert d.text == "Client age not recorded"

    # A group this module has no sentences for still gets one, from its contribution.
    base = feature_registry(ALLIANCE6)
    extra = Feature(
        "therapist_caseload", "therapist", "Clients on the caseload.", "clients", "context"
    )
    registry = FeatureRegistry(profile=ALLIANCE6, features=(*base.features, extra))
    arrays = client(attendance=["attended"])
    rows = landmark_rows(arrays, "latest")
    X = np.column_stack([compute_feature_matrix(arrays, base, rows), [31.0]])
    fc = np.zeros((1, len(registry.names)))
    fc[0, -1] = 0.31
    (d,) = describe_drivers(arrays, rows, registry, X, explanation(registry, fc))[0]
    assert d.text == "Therapist contributes +0.31 to the risk (log-odds)"
    assert d.evidence == {"fact": "contribution", "contribution": 0.31}
