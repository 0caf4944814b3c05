"""The validation report: every problem at once in table, row, column order, rows as
positions, and reasons that never contain cell values (privacy)."""

from __future__ import annotations

from features import contract as c
from features import validation as v
from features.profiles import ALLIANCE6
from tests.features.validation.helpers import cohort, drop_column, found, set_cell


def test_every_problem_reported_at_once_in_table_row_column_order() -> None:
    frames = cohort()
    for mutate in (
        set_cell("sessions", 4, c.ATTENDANCE, "gone"),
        set_cell("sessions", 0, "alliance_goals", "11"),
        set_cell("sessions", 0, c.CLINIC_ID, "K02"),
        set_cell("sessions", 0, c.SESSION_NUMBER, "x"),
        set_cell("sessions", 2, c.SESSION_DATE, "2024-01-05"),
        set_cell("clients", 1, c.OUTCOME, "?"),
        set_cell("clients", 0, c.AGE, "200"),
        drop_column("clients", c.THERAPIST_ID),
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
    s, cl = set_cell("sessions", 2, c.SESSION_DATE, "2024-01-05")(cohort())
    shuffled = s.iloc[[4, 2, 0, 3, 1]].reset_index(drop=True)
    report = v.validate_tables(shuffled, cl)
    assert found(report) == [("sessions", 1, c.SESSION_DATE, v.DATE_BACKWARDS)]
    # Only the immediate predecessor counts: one early typo flags one row, not all later ones.
    s, cl = set_cell("sessions", 0, c.SESSION_DATE, "2024-01-12")(cohort())
    assert found(v.validate_tables(s, cl)) == [("sessions", 1, c.SESSION_DATE, v.DATE_BACKWARDS)]


def test_rows_are_positions_whatever_the_index() -> None:
    s, cl = set_cell("sessions", 3, c.ATTENDANCE, "??")(cohort())
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
