"""Data-contract validation: one test per rule, many problems at once, privacy, profiles, docs."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import contract as c
from features import validation as v
from features.profiles import ALLIANCE6, PROFILES, SRS, WAI_SR, InstrumentProfile

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-contract.md"

Frames = tuple[pd.DataFrame, pd.DataFrame]
Expected = list[tuple[str, int | None, str | None, str]]


def _mid(profile: InstrumentProfile, offset: float = 0.0) -> str:
    return f"{(profile.scale_min + profile.scale_max) / 2 + offset:g}"


def cohort(profile: InstrumentProfile = ALLIANCE6) -> Frames:
    """A valid raw (all-text, as read from CSV) pair: clients 007 (3 sessions), 012 (2)."""
    rows = [
        # client, session_number, date, attendance, rated
        ("007", "1", "2024-01-02", "attended", True),
        ("007", "2", "2024-01-09", "no_show", False),
        ("007", "3", "2024-01-16", "attended", True),
        ("012", "1", "2024-02-01", "attended", True),
        ("012", "2", "2024-02-08", "cancelled", False),
    ]
    sessions = pd.DataFrame(
        {
            c.CLIENT_ID: [r[0] for r in rows],
            c.CLINIC_ID: ["K01"] * len(rows),
            c.THERAPIST_ID: ["T01"] * len(rows),
            c.SESSION_NUMBER: [r[1] for r in rows],
            c.SESSION_DATE: [r[2] for r in rows],
            c.ATTENDANCE: [r[3] for r in rows],
            **{col: [_mid(profile) if r[4] else None for r in rows] for col in profile.columns},
        },
        dtype="str",
    )
    clients = pd.DataFrame(
        {
            c.CLIENT_ID: ["007", "012"],
            c.CLINIC_ID: ["K01", "K01"],
            c.THERAPIST_ID: ["T01", "T01"],
            c.INTAKE_DATE: ["2024-01-01", "2024-01-30"],
            c.OUTCOME: ["completed", "dropout"],
            c.AGE: ["34", None],
            c.GENDER: ["female", None],
            c.REFERRAL_SOURCE: ["gp", "self"],
        },
        dtype="str",
    )
    return sessions, clients


def found(report: v.ValidationReport) -> Expected:
    return [(p.table, p.row, p.column, p.reason) for p in report.problems]


def _set(table: str, row: int, column: str, value: str | None) -> Callable[[Frames], Frames]:
    def mutate(frames: Frames) -> Frames:
        s, cl = (f.copy() for f in frames)
        target = s if table == "sessions" else cl
        target.loc[row, column] = value
        return s, cl

    return mutate


def _append(table: str, **values: str) -> Callable[[Frames], Frames]:
    def mutate(frames: Frames) -> Frames:
        s, cl = frames
        if table == "sessions":
            s = pd.concat([s, pd.DataFrame([values], dtype="str")], ignore_index=True)
        else:
            cl = pd.concat([cl, pd.DataFrame([values], dtype="str")], ignore_index=True)
        return s, cl

    return mutate


def _drop(table: str, column: str) -> Callable[[Frames], Frames]:
    def mutate(frames: Frames) -> Frames:
        s, cl = frames
        if table == "sessions":
            return s.drop(columns=column), cl
        return s, cl.drop(columns=column)

    return mutate


def test_valid_cohort_has_no_problems_and_infers_profile() -> None:
    report = v.validate_tables(*cohort())
    assert report.ok and report.problems == ()
    assert report.profile is ALLIANCE6
    assert report.bad_session_rows.size == 0 and report.bad_client_rows.size == 0
    assert (report.n_sessions, report.n_clients) == (5, 2)


SESSION_ROW = [
    ("empty client_id", _set("sessions", 1, c.CLIENT_ID, "  "), [(1, c.CLIENT_ID, v.EMPTY_ID)]),
    ("empty clinic_id", _set("sessions", 1, c.CLINIC_ID, None), [(1, c.CLINIC_ID, v.EMPTY_ID)]),
    ("empty therapist", _set("sessions", 4, c.THERAPIST_ID, ""), [(4, c.THERAPIST_ID, v.EMPTY_ID)]),
    *[
        (
            f"session_number {bad!r}",
            _set("sessions", 1, c.SESSION_NUMBER, bad),
            [(1, c.SESSION_NUMBER, v.SESSION_NUMBER_INVALID)],
        )
        for bad in ("2.5", "0", "-1", "two", None, "10001", "inf", "nan")
    ],
    (
        "duplicate session_number flags every copy",
        _set("sessions", 2, c.SESSION_NUMBER, "2"),
        [
            (1, c.SESSION_NUMBER, v.DUPLICATE_SESSION_NUMBER),
            (2, c.SESSION_NUMBER, v.DUPLICATE_SESSION_NUMBER),
        ],
    ),
    *[
        (
            f"session_date {bad!r}",
            _set("sessions", 1, c.SESSION_DATE, bad),
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
        _set("sessions", 2, c.SESSION_DATE, "2024-01-05"),
        [(2, c.SESSION_DATE, v.DATE_BACKWARDS)],
    ),
    *[
        (
            f"attendance {bad!r}",
            _set("sessions", 1, c.ATTENDANCE, bad),
            [(1, c.ATTENDANCE, v.UNKNOWN_ATTENDANCE)],
        )
        for bad in ("present", "NA", "no show", None)
    ],
    (
        "rating not numeric",
        _set("sessions", 0, "alliance_goals", "high"),
        [(0, "alliance_goals", v.RATING_NOT_NUMERIC)],
    ),
    *[
        (
            f"rating {bad!r} out of range",
            _set("sessions", 2, "alliance_trust", bad),
            [(2, "alliance_trust", v.rating_out_of_range(ALLIANCE6))],
        )
        for bad in ("10.5", "-0.1", "1e3", "inf")
    ],
    (
        "rating on a session not attended",
        _set("sessions", 1, "alliance_goals", "5"),
        [(1, "alliance_goals", v.RATING_NOT_ATTENDED)],
    ),
    (
        "session for an unknown client",
        _append(
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
        _set("sessions", 3, c.CLINIC_ID, "K02"),
        [(3, c.CLINIC_ID, v.CLINIC_MISMATCH)],
    ),
    (
        "session before intake",
        _set("sessions", 0, c.SESSION_DATE, "2023-12-31"),
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
        _append(
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
        _set("clients", 1, c.CLIENT_ID, ""),
        [
            ("sessions", 3, c.CLIENT_ID, v.UNKNOWN_CLIENT),
            ("sessions", 4, c.CLIENT_ID, v.UNKNOWN_CLIENT),
            ("clients", 1, c.CLIENT_ID, v.EMPTY_ID),
        ],
    ),
    (
        "empty therapist_id",
        _set("clients", 0, c.THERAPIST_ID, None),
        [("clients", 0, c.THERAPIST_ID, v.EMPTY_ID)],
    ),
    *[
        (
            f"intake_date {bad!r}",
            _set("clients", 0, c.INTAKE_DATE, bad),
            [("clients", 0, c.INTAKE_DATE, v.DATE_NOT_ISO)],
        )
        for bad in ("2024-13-01", "yesterday", None)
    ],
    *[
        (
            f"outcome {bad!r}",
            _set("clients", 1, c.OUTCOME, bad),
            [("clients", 1, c.OUTCOME, v.UNKNOWN_OUTCOME)],
        )
        for bad in ("finished", "drop-out", None)
    ],
    *[
        (
            f"age {bad!r}",
            _set("clients", 0, c.AGE, bad),
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
        pytest.param(_set("sessions", 2, c.SESSION_NUMBER, "3.0"), id="session_number 3.0"),
        pytest.param(_set("sessions", 1, c.SESSION_DATE, "2024-01-09T00:00:00"), id="T00:00:00"),
        pytest.param(_set("sessions", 1, c.SESSION_DATE, "2024-01-09 00:00"), id="space 00:00"),
        pytest.param(_set("sessions", 1, c.ATTENDANCE, " No_Show "), id="code case and space"),
        pytest.param(_set("sessions", 2, c.SESSION_DATE, "2024-01-09"), id="same day twice"),
        pytest.param(_set("sessions", 3, c.SESSION_DATE, "2024-01-30"), id="on intake day"),
        pytest.param(_set("sessions", 0, "alliance_goals", "10"), id="rating at scale max"),
        pytest.param(_set("sessions", 2, c.SESSION_NUMBER, "7"), id="gap in numbering"),
        pytest.param(_set("sessions", 0, c.THERAPIST_ID, "T02"), id="other therapist"),
        pytest.param(_set("clients", 1, c.OUTCOME, "Ongoing"), id="outcome case"),
        pytest.param(_set("clients", 0, c.AGE, "40.0"), id="age 40.0"),
        pytest.param(_set("clients", 0, c.GENDER, "non-binary / other"), id="free text"),
        pytest.param(_drop("clients", c.AGE), id="optional column absent"),
    ],
)
def test_accepted_variants_are_not_problems(mutate: Callable[[Frames], Frames]) -> None:
    report = v.validate_tables(*mutate(cohort()))
    assert report.problems == ()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            _drop("sessions", c.ATTENDANCE),
            [("sessions", None, c.ATTENDANCE, v.MISSING_COLUMN)],
            id="sessions column",
        ),
        pytest.param(
            _drop("clients", c.OUTCOME),
            [("clients", None, c.OUTCOME, v.MISSING_COLUMN)],
            id="clients column",
        ),
        pytest.param(
            _drop("sessions", "alliance_trust"),
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
    s, cl = _drop("sessions", "alliance_trust")(cohort())
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
    s, cl = _append(
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


def test_every_problem_reported_at_once_in_table_row_column_order() -> None:
    frames = cohort()
    for mutate in (
        _set("sessions", 4, c.ATTENDANCE, "gone"),
        _set("sessions", 0, "alliance_goals", "11"),
        _set("sessions", 0, c.CLINIC_ID, "K02"),
        _set("sessions", 0, c.SESSION_NUMBER, "x"),
        _set("sessions", 2, c.SESSION_DATE, "2024-01-05"),
        _set("clients", 1, c.OUTCOME, "?"),
        _set("clients", 0, c.AGE, "200"),
        _drop("clients", c.THERAPIST_ID),
    ):
        frames = mutate(frames)
    s, cl = frames
    s = s.assign(extra="x")
    report = v.validate_tables(s, cl)
    assert found(report) == [
        ("sessions", None, None, v.unknown_column(13)),
        ("sessions", 0, c.CLINIC_ID, v.CLINIC_MISMATCH),
        ("sessions", 0, c.SESSION_NUMBER, v.SESSION_NUMBER_INVALID),
        ("sessions", 0, "alliance_goals", v.rating_out_of_range(ALLIANCE6)),
        ("sessions", 2, c.SESSION_DATE, v.DATE_BACKWARDS),
        ("sessions", 4, c.ATTENDANCE, v.UNKNOWN_ATTENDANCE),
        ("clients", None, c.THERAPIST_ID, v.MISSING_COLUMN),
        ("clients", 0, c.AGE, v.AGE_INVALID),
        ("clients", 1, c.OUTCOME, v.UNKNOWN_OUTCOME),
    ]
    assert report.bad_session_rows.tolist() == [0, 2, 4]
    assert report.bad_client_rows.tolist() == [0, 1]
    summary = report.summary()
    assert list(summary.columns) == ["table", "column", "severity", "reason", "rows"]
    assert summary["rows"].sum() == len(report.problems)
    assert summary["table"].tolist() == ["sessions"] * 6 + ["clients"] * 3
    assert summary.iloc[5]["severity"] == "warning"  # warnings after errors within a table
    frame = report.to_frame()
    assert frame["row"].isna().sum() == 2 and len(frame) == len(report.problems)


def test_backwards_dates_follow_session_number_not_row_order() -> None:
    s, cl = _set("sessions", 2, c.SESSION_DATE, "2024-01-05")(cohort())
    shuffled = s.iloc[[4, 2, 0, 3, 1]].reset_index(drop=True)
    report = v.validate_tables(shuffled, cl)
    assert found(report) == [("sessions", 1, c.SESSION_DATE, v.DATE_BACKWARDS)]
    # Only the immediate predecessor counts: one early typo flags one row, not all later ones.
    s, cl = _set("sessions", 0, c.SESSION_DATE, "2024-01-12")(cohort())
    assert found(v.validate_tables(s, cl)) == [("sessions", 1, c.SESSION_DATE, v.DATE_BACKWARDS)]


def test_rows_are_positions_whatever_the_index() -> None:
    s, cl = _set("sessions", 3, c.ATTENDANCE, "??")(cohort())
    s.index = [10, 20, 30, 40, 50]
    assert found(v.validate_tables(s, cl)) == [("sessions", 3, c.ATTENDANCE, v.UNKNOWN_ATTENDANCE)]


DISTINCTIVE = ("ZQX4417", "987.65", "1987-06-05", "SECRETCODE", "4444.5", "KZ-31337", "131")


def test_reasons_never_contain_cell_values() -> None:
    s, cl = cohort()
    s.loc[0, c.CLIENT_ID] = DISTINCTIVE[0]  # orphan
    s.loc[2, "alliance_goals"] = DISTINCTIVE[1]
    s.loc[3, c.SESSION_DATE] = DISTINCTIVE[2]  # before intake
    s.loc[1, c.ATTENDANCE] = DISTINCTIVE[3]
    s.loc[4, c.SESSION_NUMBER] = DISTINCTIVE[4]
    s.loc[2, c.CLINIC_ID] = DISTINCTIVE[5]
    cl.loc[0, c.AGE] = DISTINCTIVE[6]
    report = v.validate_tables(s, cl)
    assert len(report.errors) == 7
    text = "\n".join(p.reason for p in report.problems) + report.summary().to_string()
    for value in DISTINCTIVE:
        assert value not in text


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


def test_normalised_dtypes_are_the_contract() -> None:
    s, cl = cohort()
    s.loc[1, c.ATTENDANCE] = " No_Show"
    ns = v.normalise_sessions(s.assign(notes="x"), ALLIANCE6)
    assert list(ns.columns) == [*c.SESSION_COLUMNS, *ALLIANCE6.columns]
    assert ns.dtypes[c.SESSION_NUMBER] == np.int64
    assert str(ns.dtypes[c.SESSION_DATE]) == "datetime64[us]"
    for col in (c.CLIENT_ID, c.CLINIC_ID, c.THERAPIST_ID, c.ATTENDANCE):
        assert ns.dtypes[col] == "str"
    for col in ALLIANCE6.columns:
        assert ns.dtypes[col] == np.float64
    assert ns[c.CLIENT_ID].tolist()[:1] == ["007"]
    assert ns[c.ATTENDANCE].tolist()[1] == c.NO_SHOW
    assert np.isnan(ns.loc[1, "alliance_goals"]) and ns.loc[0, "alliance_goals"] == 5.0
    assert (ns[c.SESSION_DATE] == ns[c.SESSION_DATE].dt.normalize()).all()

    nc = v.normalise_clients(cl.drop(columns=[c.GENDER, c.REFERRAL_SOURCE]))
    assert list(nc.columns) == [
        *c.CLIENT_REQUIRED_COLUMNS[:4],
        c.OUTCOME,
        *c.CLIENT_OPTIONAL_COLUMNS,
    ]
    assert nc.dtypes[c.AGE] == np.float64 and np.isnan(nc.loc[1, c.AGE])
    assert nc[c.GENDER].isna().all() and nc.dtypes[c.GENDER] == "str"
    assert str(nc.dtypes[c.INTAKE_DATE]) == "datetime64[us]"


def test_normalisers_never_raise_and_coerce_bad_cells_to_missing() -> None:
    s, cl = cohort()
    s.loc[0, c.SESSION_NUMBER] = "1.5"
    s.loc[1, c.SESSION_DATE] = "soon"
    s.loc[2, c.ATTENDANCE] = "maybe"
    s.loc[3, "alliance_goals"] = "high"
    ns = v.normalise_sessions(s, ALLIANCE6)
    assert ns.dtypes[c.SESSION_NUMBER] == np.float64
    assert np.isnan(ns.loc[0, c.SESSION_NUMBER]) and ns.loc[2, c.SESSION_NUMBER] == 3
    assert pd.isna(ns.loc[1, c.SESSION_DATE])
    assert pd.isna(ns.loc[2, c.ATTENDANCE])
    assert np.isnan(ns.loc[3, "alliance_goals"])
    absent = v.normalise_sessions(s.drop(columns=c.ATTENDANCE), ALLIANCE6)
    assert absent[c.ATTENDANCE].isna().all()


def test_typed_input_validates_and_normalising_is_idempotent() -> None:
    raw_s, raw_cl = cohort()
    ns, nc = v.normalise_sessions(raw_s, ALLIANCE6), v.normalise_clients(raw_cl)
    assert v.validate_tables(ns, nc).problems == ()
    pd.testing.assert_frame_equal(v.normalise_sessions(ns, ALLIANCE6), ns)
    pd.testing.assert_frame_equal(v.normalise_clients(nc), nc)


def test_typed_edge_cases() -> None:
    raw_s, raw_cl = cohort()
    s = v.normalise_sessions(raw_s, ALLIANCE6)
    cl = v.normalise_clients(raw_cl)
    # Integer ids (Parquet) and integer ids with gaps (read back as float) keep their digits.
    s[c.THERAPIST_ID] = pd.Series([1, 1, 1, 2, np.nan], dtype="float64")
    assert v.normalise_sessions(s, ALLIANCE6)[c.THERAPIST_ID].tolist()[:4] == ["1", "1", "1", "2"]
    # A typed date-time is a date only at midnight; tz-aware ones are compared in wall time.
    s[c.SESSION_DATE] = s[c.SESSION_DATE] + pd.to_timedelta([0, 0, 0, 0, 5], unit="h")
    report = v.validate_tables(s, cl)
    assert (4, c.SESSION_DATE, v.DATE_NOT_ISO) in [
        (p.row, p.column, p.reason) for p in report.problems
    ]
    cl[c.INTAKE_DATE] = cl[c.INTAKE_DATE].dt.tz_localize("Europe/London")
    assert v.normalise_clients(cl)[c.INTAKE_DATE].notna().all()


def test_lone_surrogates_from_decoded_json_do_not_raise() -> None:
    s, cl = cohort()
    s = s.astype(object)
    s.loc[0, c.ATTENDANCE] = "\ud800"
    s.loc[1, c.CLIENT_ID] = "\udfff"
    report = v.validate_tables(s, cl)
    assert (0, c.ATTENDANCE, v.UNKNOWN_ATTENDANCE) in [
        (p.row, p.column, p.reason) for p in report.problems
    ]


_CELL = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(
        ["007", "1", "2.0", "-3", "1e400", "nan", "2024-01-05", "2024-02-30", "attended"]
    ),
)


@st.composite
def _raw_tables(draw: st.DrawFn) -> Frames:
    n_s, n_c = draw(st.integers(0, 6)), draw(st.integers(0, 4))
    s_cols = [*c.SESSION_COLUMNS, *ALLIANCE6.columns]
    c_cols = [*c.CLIENT_REQUIRED_COLUMNS, *c.CLIENT_OPTIONAL_COLUMNS]
    s_cols = draw(
        st.lists(st.sampled_from([*s_cols, "junk"]), unique=True, min_size=0, max_size=14)
    )
    c_cols = draw(st.lists(st.sampled_from([*c_cols, "junk"]), unique=True, min_size=0, max_size=9))
    sessions = pd.DataFrame(
        {col: draw(st.lists(_CELL, min_size=n_s, max_size=n_s)) for col in s_cols},
        index=range(n_s),
        dtype=object,
    )
    clients = pd.DataFrame(
        {col: draw(st.lists(_CELL, min_size=n_c, max_size=n_c)) for col in c_cols},
        index=range(n_c),
        dtype=object,
    )
    return sessions, clients


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables=_raw_tables(), as_text=st.booleans())
def test_validator_never_raises_on_arbitrary_string_cells(tables: Frames, as_text: bool) -> None:
    s, cl = tables
    if as_text:
        s, cl = s.astype("str"), cl.astype("str")
    report = v.validate_tables(s, cl)
    for p in report.problems:
        assert p.row is None or 0 <= p.row < (len(s) if p.table == "sessions" else len(cl))
    keys = [(v._TABLES.index(p.table), -1 if p.row is None else p.row) for p in report.problems]
    assert keys == sorted(keys)
    assert set(report.bad_session_rows.tolist()) == {
        p.row for p in report.errors if p.table == "sessions" and p.row is not None
    }
    assert report.ok == (not report.errors)
    # Normalising never raises either, whatever the cells.
    v.normalise_sessions(s, ALLIANCE6)
    v.normalise_clients(cl)


# --------------------------------------------------------------------------------------------
# docs/data-contract.md stays in step with the code
# --------------------------------------------------------------------------------------------


def test_every_reason_text_is_in_the_contract_doc() -> None:
    doc = DOC.read_text()
    constants = [
        name for name, value in vars(v).items() if name.isupper() and isinstance(value, str)
    ]
    assert len(constants) >= 18
    missing = [text for text in v.reason_texts() if text not in doc]
    assert missing == []


def test_doc_profile_table_matches_profiles() -> None:
    doc = DOC.read_text()
    for p in PROFILES.values():
        row = (
            f"| `{p.name}` | {', '.join(f'`{col}`' for col in p.columns)} | "
            f"{p.scale_min:g} to {p.scale_max:g} | {p.total} | {p.cutoff_total:g} | "
            f"{p.element_cutoff:g} | {p.drop_points:g} |"
        )
        assert row in doc


def test_doc_examples_are_valid() -> None:
    blocks = dict(
        re.findall(r"<!-- example: (\w+) -->\n```csv\n(.*?)```", DOC.read_text(), re.DOTALL)
    )
    assert set(blocks) == {"sessions", "clients"}
    frames = {
        name: pd.read_csv(io.StringIO(text), dtype="str", keep_default_na=False, na_values=[""])
        for name, text in blocks.items()
    }
    report = v.validate_tables(frames["sessions"], frames["clients"])
    assert report.problems == ()
    assert report.profile is SRS
