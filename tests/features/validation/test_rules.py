"""Data-contract validation: one test per rule (sessions, clients, columns, warnings) and
per instrument profile (features/validation.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from features import contract as c
from features import validation as v
from features.profiles import ALLIANCE6, PROFILES, SRS, WAI_SR, InstrumentProfile
from tests.features.validation.helpers import (
    Expected,
    Frames,
    append_row,
    cohort,
    drop_column,
    found,
    set_cell,
)


def test_valid_cohort_has_no_problems_and_infers_profile() -> None:
    report = v.validate_tables(*cohort())
    assert report.ok and report.problems == ()
    assert report.profile is ALLIANCE6
    assert report.bad_session_rows.size == 0 and report.bad_client_rows.size == 0
    assert (report.n_sessions, report.n_clients) == (5, 2)


SESSION_ROW = [
    ("empty client_id", set_cell("sessions", 1, c.CLIENT_ID, "  "), [(1, c.CLIENT_ID, v.EMPTY_ID)]),
    ("empty clinic_id", set_cell("sessions", 1, c.CLINIC_ID, None), [(1, c.CLINIC_ID, v.EMPTY_ID)]),
    (
        "empty therapist",
        set_cell("sessions", 4, c.THERAPIST_ID, ""),
        [(4, c.THERAPIST_ID, v.EMPTY_ID)],
    ),
    *[
        (
            f"session_number {bad!r}",
            set_cell("sessions", 1, c.SESSION_NUMBER, bad),
            [(1, c.SESSION_NUMBER, v.SESSION_NUMBER_INVALID)],
        )
        for bad in ("2.5", "0", "-1", "two", None, "10001", "inf", "nan")
    ],
    (
        "duplicate session_number flags every copy",
        set_cell("sessions", 2, c.SESSION_NUMBER, "2"),
        [
            (1, c.SESSION_NUMBER, v.DUPLICATE_SESSION_NUMBER),
            (2, c.SESSION_NUMBER, v.DUPLICATE_SESSION_NUMBER),
        ],
    ),
    *[
        (
            f"session_date {bad!r}",
            set_cell("sessions", 1, c.SESSION_DATE, bad),
            [(1, c.SESSION_DATE, v.DATE_NOT_ISO)],
        )
        for bad in (
            "2024-02-30",
            "09/01/2024",
            "2024-1-9",
            "2024-01-09T10:30:00",
            "2024-01-09T00:00:00+01:00",
            None,
        )
    ],
    (
        "dates going backwards flag the later row",
        set_cell("sessions", 2, c.SESSION_DATE, "2024-01-05"),
        [(2, c.SESSION_DATE, v.DATE_BACKWARDS)],
    ),
    *[
        (
            f"attendance {bad!r}",
            set_cell("sessions", 1, c.ATTENDANCE, bad),
            [(1, c.ATTENDANCE, v.UNKNOWN_ATTENDANCE)],
        )
        for bad in ("present", "NA", "no show", None)
    ],
    (
        "rating not numeric",
        set_cell("sessions", 0, "alliance_goals", "high"),
        [(0, "alliance_goals", v.RATING_NOT_NUMERIC)],
    ),
    *[
        (
            f"rating {bad!r} out of range",
            set_cell("sessions", 2, "alliance_trust", bad),
            [(2, "alliance_trust", v.rating_out_of_range(ALLIANCE6))],
        )
        for bad in ("10.5", "-0.1", "1e3", "inf")
    ],
    (
        "rating on a session not attended",
        set_cell("sessions", 1, "alliance_goals", "5"),
        [(1, "alliance_goals", v.RATING_NOT_ATTENDED)],
    ),
    (
        "session for an unknown client",
        append_row(
            "sessions",
            client_id="999",
            clinic_id="K01",
            therapist_id="T01",
            session_number="1",
            session_date="2024-03-01",
            attendance="cancelled",
        ),
        [(5, c.CLIENT_ID, v.UNKNOWN_CLIENT)],
    ),
    (
        "clinic differs from the client's",
        set_cell("sessions", 3, c.CLINIC_ID, "K02"),
        [(3, c.CLINIC_ID, v.CLINIC_MISMATCH)],
    ),
    (
        "session before intake",
        set_cell("sessions", 0, c.SESSION_DATE, "2023-12-31"),
        [(0, c.SESSION_DATE, v.BEFORE_INTAKE)],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in SESSION_ROW],
)
def test_session_row_rule(
    mutate: Callable[[Frames], Frames], expected: list[tuple[int, str, str]]
) -> None:
    report = v.validate_tables(*mutate(cohort()))
    assert found(report) == [("sessions", row, col, reason) for row, col, reason in expected]
    assert not report.ok
    assert report.bad_session_rows.tolist() == sorted({row for row, _, _ in expected})
    assert report.bad_client_rows.size == 0


CLIENT_ROW = [
    (
        "duplicate client_id flags every copy",
        append_row(
            "clients",
            client_id="007",
            clinic_id="K01",
            therapist_id="T01",
            intake_date="2024-01-01",
            outcome="dropout",
        ),
        [
            ("clients", 0, c.CLIENT_ID, v.DUPLICATE_CLIENT),
            ("clients", 2, c.CLIENT_ID, v.DUPLICATE_CLIENT),
        ],
    ),
    (
        "empty client_id also orphans its sessions",
        set_cell("clients", 1, c.CLIENT_ID, ""),
        [
            ("sessions", 3, c.CLIENT_ID, v.UNKNOWN_CLIENT),
            ("sessions", 4, c.CLIENT_ID, v.UNKNOWN_CLIENT),
            ("clients", 1, c.CLIENT_ID, v.EMPTY_ID),
        ],
    ),
    (
        "empty therapist_id",
        set_cell("clients", 0, c.THERAPIST_ID, None),
        [("clients", 0, c.THERAPIST_ID, v.EMPTY_ID)],
    ),
    *[
        (
            f"intake_date {bad!r}",
            set_cell("clients", 0, c.INTAKE_DATE, bad),
            [("clients", 0, c.INTAKE_DATE, v.DATE_NOT_ISO)],
        )
        for bad in ("2024-13-01", "yesterday", None)
    ],
    *[
        (
            f"outcome {bad!r}",
            set_cell("clients", 1, c.OUTCOME, bad),
            [("clients", 1, c.OUTCOME, v.UNKNOWN_OUTCOME)],
        )
        for bad in ("finished", "drop-out", None)
    ],
    *[
        (
            f"age {bad!r}",
            set_cell("clients", 0, c.AGE, bad),
            [("clients", 0, c.AGE, v.AGE_INVALID)],
        )
        for bad in ("25.5", "-1", "121", "thirty")
    ],
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in CLIENT_ROW],
)
def test_client_row_rule(mutate: Callable[[Frames], Frames], expected: Expected) -> None:
    report = v.validate_tables(*mutate(cohort()))
    assert found(report) == expected
    assert report.bad_client_rows.tolist() == sorted(
        {row for table, row, _, _ in expected if table == "clients" and row is not None}
    )


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(set_cell("sessions", 2, c.SESSION_NUMBER, "3.0"), id="session_number 3.0"),
        pytest.param(
            set_cell("sessions", 1, c.SESSION_DATE, "2024-01-09T00:00:00"), id="T00:00:00"
        ),
        pytest.param(set_cell("sessions", 1, c.SESSION_DATE, "2024-01-09 00:00"), id="space 00:00"),
        pytest.param(set_cell("sessions", 1, c.ATTENDANCE, " No_Show "), id="code case and space"),
        pytest.param(set_cell("sessions", 2, c.SESSION_DATE, "2024-01-09"), id="same day twice"),
        pytest.param(set_cell("sessions", 3, c.SESSION_DATE, "2024-01-30"), id="on intake day"),
        pytest.param(set_cell("sessions", 0, "alliance_goals", "10"), id="rating at scale max"),
        pytest.param(set_cell("sessions", 2, c.SESSION_NUMBER, "7"), id="gap in numbering"),
        pytest.param(set_cell("sessions", 0, c.THERAPIST_ID, "T02"), id="other therapist"),
        pytest.param(set_cell("clients", 1, c.OUTCOME, "Ongoing"), id="outcome case"),
        pytest.param(set_cell("clients", 0, c.AGE, "40.0"), id="age 40.0"),
        pytest.param(set_cell("clients", 0, c.GENDER, "non-binary / other"), id="free text"),
        pytest.param(drop_column("clients", c.AGE), id="optional column absent"),
    ],
)
def test_accepted_variants_are_not_problems(mutate: Callable[[Frames], Frames]) -> None:
    report = v.validate_tables(*mutate(cohort()))
    assert report.problems == ()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            drop_column("sessions", c.ATTENDANCE),
            [("sessions", None, c.ATTENDANCE, v.MISSING_COLUMN)],
            id="sessions column",
        ),
        pytest.param(
            drop_column("clients", c.OUTCOME),
            [("clients", None, c.OUTCOME, v.MISSING_COLUMN)],
            id="clients column",
        ),
        pytest.param(
            drop_column("sessions", "alliance_trust"),
            [
                (
                    "sessions",
                    None,
                    None,
                    v.no_profile_match(
                        [col for col in ALLIANCE6.columns if col != "alliance_trust"]
                    ),
                )
            ],
            id="no profile matches",
        ),
    ],
)
def test_missing_column(mutate: Callable[[Frames], Frames], expected: Expected) -> None:
    report = v.validate_tables(*mutate(cohort()))
    assert found(report) == expected
    assert not report.ok and report.table_errors
    # Table-level errors point at no row, so no row is "bad" on their account.
    assert report.bad_session_rows.size == 0 and report.bad_client_rows.size == 0


def test_no_profile_match_lists_known_profiles_found_and_missing_columns() -> None:
    s, cl = drop_column("sessions", "alliance_trust")(cohort())
    reason = v.validate_tables(s, cl).problems[0].reason
    assert reason.startswith(v.NO_PROFILE_MATCH)
    for name in PROFILES:
        assert name in v.NO_PROFILE_MATCH
    assert "found: alliance_acceptance, alliance_collaboration" in reason
    assert reason.endswith("closest profile alliance6 is missing: alliance_trust")
    assert v.validate_tables(s, cl).profile is None


def test_explicit_profile_reports_foreign_and_missing_rating_columns() -> None:
    s, cl = cohort()
    s = s.assign(alliance_bond=None).drop(columns="alliance_empathy")
    report = v.validate_tables(s, cl, ALLIANCE6)
    assert found(report) == [
        ("sessions", None, "alliance_empathy", v.MISSING_COLUMN),
        ("sessions", None, "alliance_bond", v.alliance_not_in_profile(ALLIANCE6)),
    ]
    assert report.profile is ALLIANCE6


def test_unknown_column_is_a_warning_naming_its_position_not_its_header() -> None:
    s, cl = cohort()
    s = s.assign(**{"C000123 private": "x"})
    report = v.validate_tables(s, cl)
    assert report.ok
    assert found(report) == [("sessions", None, None, v.unknown_column(s.shape[1]))]
    assert "C000123" not in report.problems[0].reason


def test_client_without_sessions_is_a_warning() -> None:
    s, cl = append_row(
        "clients",
        client_id="555",
        clinic_id="K01",
        therapist_id="T01",
        intake_date="2024-03-01",
        outcome="ongoing",
    )(cohort())
    report = v.validate_tables(s, cl)
    assert report.ok
    assert [(p.table, p.row, p.column, p.reason, p.severity) for p in report.problems] == [
        ("clients", 2, c.CLIENT_ID, v.NO_SESSIONS, "warning")
    ]
    assert report.warnings == report.problems and report.errors == ()
    assert report.bad_client_rows.size == 0


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_each_profile_is_inferred_and_range_checked(profile: InstrumentProfile) -> None:
    s, cl = cohort(profile)
    report = v.validate_tables(s, cl)
    assert report.ok and report.profile is profile and report.problems == ()
    first = profile.columns[0]
    s.loc[0, first] = f"{profile.scale_max + 0.5:g}"
    s.loc[2, first] = f"{profile.scale_min - 0.5:g}"
    s.loc[3, profile.columns[-1]] = f"{profile.scale_min:g}"
    expected = v.rating_out_of_range(profile)
    assert found(v.validate_tables(s, cl, profile)) == [
        ("sessions", 0, first, expected),
        ("sessions", 2, first, expected),
    ]


def test_wai_sr_rating_of_zero_is_out_of_range_but_fine_for_srs() -> None:
    for profile, ok in ((WAI_SR, False), (SRS, True)):
        s, cl = cohort(profile)
        s.loc[0, profile.columns[0]] = "0"
        assert v.validate_tables(s, cl).ok is ok
