"""File I/O at the edge: reading, load_cohort (fail / quarantine), problem formatting, privacy."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import contract as c
from features import validation as v
from features.profiles import ALLIANCE6, WAI_SR
from training import io as tio

SESSIONS_CSV = """\
client_id,clinic_id,therapist_id,session_number,session_date,attendance,alliance_goal,alliance_task,alliance_bond
007,K01,T01,1,2024-01-02,attended,4,4.5,5
007,K01,T01,2,2024-01-09,no_show,,,
007,K01,T01,3,2024-01-16,attended,3.5,4,4
012,K01,T02,1,2024-02-01,attended,2,2.5,3
012,K01,T02,2,2024-02-08,cancelled,,,
020,K02,T03,1,2024-02-05,attended,5,5,5
"""
CLIENTS_CSV = """\
client_id,clinic_id,therapist_id,intake_date,outcome,age,gender,referral_source
007,K01,T01,2024-01-01,completed,34,female,gp
012,K01,T02,2024-01-30,dropout,,,self
020,K02,T03,2024-02-01,ongoing,19,male,
"""


def write(
    tmp_path: Path, sessions: str = SESSIONS_CSV, clients: str = CLIENTS_CSV
) -> tuple[Path, Path]:
    s, cl = tmp_path / "sessions.csv", tmp_path / "clients.csv"
    s.write_text(sessions)
    cl.write_text(clients)
    return s, cl


def edit(text: str, line: int, column: str, value: str) -> str:
    """Replace one cell of a CSV text (``line`` 1-based, header is line 1)."""
    lines = text.splitlines()
    header = lines[0].split(",")
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# read_table
# --------------------------------------------------------------------------------------------


def test_csv_is_read_as_text_and_only_empty_cells_are_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfid,code,n\n007,NA,\n0.50,null, 3 \n")
    frame = tio.read_table(path)
    assert list(frame.columns) == ["id", "code", "n"]  # byte-order mark ignored
    assert frame["id"].tolist() == ["007", "0.50"]
    assert frame["code"].tolist() == ["NA", "null"]
    assert pd.isna(frame.loc[0, "n"]) and frame.loc[1, "n"] == " 3 "
    assert all(dtype == "str" for dtype in frame.dtypes)


def test_gzipped_csv(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("id\n007\n")
    assert tio.read_table(path)["id"].tolist() == ["007"]


def test_unsupported_extension_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "sessions.xlsx"
    bad.write_text("x")
    with pytest.raises(
        ValueError, match=r"sessions\.xlsx: unsupported file type; use one of \.csv"
    ):
        tio.read_table(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        tio.read_table(tmp_path / "nope.csv")


def test_malformed_csv_names_the_line_not_the_content(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\nSECRET7,4,5\n")
    with pytest.raises(
        ValueError, match=r"t\.csv: cannot be read as csv \(Expected 2 fields in line 3, saw 3\)"
    ) as err:
        tio.read_table(path)
    assert "SECRET7" not in str(err.value)
    path.write_text("")
    with pytest.raises(ValueError, match=r"cannot be read as csv \(EmptyDataError\)"):
        tio.read_table(path)
    path.write_bytes(b"a\n\xff\n")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        tio.read_table(path)


def test_parquet_round_trip_matches_csv(tmp_path: Path) -> None:
    s_csv, c_csv = write(tmp_path)
    from_csv = tio.load_cohort(s_csv, c_csv)
    s_pq, c_pq = tmp_path / "sessions.parquet", tmp_path / "clients.parquet"
    from_csv.sessions.to_parquet(s_pq)
    from_csv.clients.to_parquet(c_pq)
    from_pq = tio.load_cohort(s_pq, c_pq)
    pd.testing.assert_frame_equal(from_pq.sessions, from_csv.sessions)
    pd.testing.assert_frame_equal(from_pq.clients, from_csv.clients)
    assert from_pq.profile is WAI_SR
    # Raw text columns in Parquet are fine too.
    tio.read_table(s_csv).to_parquet(s_pq)
    pd.testing.assert_frame_equal(tio.load_cohort(s_pq, c_pq).sessions, from_csv.sessions)


def test_parquet_with_date32_and_integer_columns(tmp_path: Path) -> None:
    s_csv, c_csv = write(tmp_path)
    expected = tio.load_cohort(s_csv, c_csv).clients
    typed = pa.table(
        {
            "client_id": ["007", "012", "020"],
            "clinic_id": ["K01", "K01", "K02"],
            "therapist_id": pa.array([1, 2, 3], pa.int64()),
            "intake_date": pa.array(
                [dt.date(2024, 1, 1), dt.date(2024, 1, 30), dt.date(2024, 2, 1)], pa.date32()
            ),
            "outcome": ["completed", "dropout", "ongoing"],
            "age": pa.array([34, None, 19], pa.int64()),
        }
    )
    c_pq = tmp_path / "clients.parquet"
    pq.write_table(typed, c_pq)
    sessions = tio.read_table(s_csv)
    sessions["therapist_id"] = sessions["therapist_id"].str.replace("T0", "")
    s_pq = tmp_path / "sessions.parquet"
    sessions.to_parquet(s_pq)
    loaded = tio.load_cohort(s_pq, c_pq).clients
    assert loaded["therapist_id"].tolist() == ["1", "2", "3"]
    pd.testing.assert_series_equal(loaded[c.INTAKE_DATE], expected[c.INTAKE_DATE])
    pd.testing.assert_series_equal(loaded[c.AGE], expected[c.AGE])


# --------------------------------------------------------------------------------------------
# load_cohort
# --------------------------------------------------------------------------------------------


def test_clean_files_load_normalised(tmp_path: Path) -> None:
    cohort = tio.load_cohort(*write(tmp_path))
    assert cohort.report.ok and cohort.profile is WAI_SR
    assert (cohort.sessions_read, cohort.clients_read) == (6, 3)
    assert (cohort.sessions_quarantined, cohort.clients_quarantined) == (0, 0)
    assert cohort.quarantine_files == {}
    s = cohort.sessions
    assert list(s.columns) == [*c.SESSION_COLUMNS, *WAI_SR.columns]
    assert s[c.CLIENT_ID].tolist()[:3] == ["007", "007", "007"]
    assert s.dtypes[c.SESSION_NUMBER] == np.int64
    assert s.loc[0, "alliance_task"] == 4.5 and np.isnan(s.loc[1, "alliance_task"])
    assert cohort.clients[c.AGE].tolist()[:1] == [34.0]
    assert not (tmp_path / "quarantine").exists()


def test_explicit_profile_that_does_not_fit_fails_even_in_quarantine_mode(tmp_path: Path) -> None:
    s, cl = write(tmp_path)
    for mode in ("fail", "quarantine"):
        with pytest.raises(tio.ContractError, match="required column is missing") as err:
            tio.load_cohort(s, cl, profile="alliance6", on_error=mode)  # type: ignore[arg-type]
        assert err.value.report.profile is ALLIANCE6
        assert err.value.report.table_errors
    assert not (tmp_path / "quarantine").exists()


def test_fail_mode_raises_a_readable_capped_report(tmp_path: Path) -> None:
    sessions = SESSIONS_CSV
    for line in range(2, 8):
        sessions = edit(sessions, line, "attendance", "present")
    s, cl = write(tmp_path, sessions)
    with pytest.raises(tio.ContractError) as err:
        tio.load_cohort(s, cl)
    report = err.value.report
    assert len(report.errors) == 6
    text = str(tio.ContractError(report, {"sessions": s, "clients": cl}, limit=4))
    lines = text.splitlines()
    assert lines[0] == "sessions.csv and clients.csv break the data contract: 6 errors, 0 warnings"
    assert lines[1] == f"  sessions.csv row 1 (line 2), column attendance: {v.UNKNOWN_ATTENDANCE}"
    assert len(lines) == 1 + 4 + 1
    assert lines[-1] == "  ... and 2 more (write them all with --report FILE)"
    assert "... and" not in str(err.value)  # default cap (20) not reached


def test_quarantine_sets_aside_whole_episodes_and_orphans(tmp_path: Path) -> None:
    sessions = edit(SESSIONS_CSV, 4, "alliance_goal", "7")  # 007's 3rd session: out of 1-5
    sessions += "999,K01,T01,1,2024-03-01,attended,4,4,4\n"  # orphan (row 7)
    clients = edit(CLIENTS_CSV, 3, "outcome", "moved away")  # 012's client row
    s, cl = write(tmp_path, sessions, clients)
    qdir = tmp_path / "q"
    cohort = tio.load_cohort(s, cl, on_error="quarantine", quarantine_dir=qdir)

    assert (cohort.sessions_read, cohort.clients_read) == (7, 3)
    assert (cohort.sessions_quarantined, cohort.clients_quarantined) == (6, 2)
    assert len(cohort.sessions) + cohort.sessions_quarantined == cohort.sessions_read
    assert len(cohort.clients) + cohort.clients_quarantined == cohort.clients_read
    assert cohort.sessions[c.CLIENT_ID].tolist() == ["020"]
    assert cohort.clients[c.CLIENT_ID].tolist() == ["020"]
    assert cohort.sessions.dtypes[c.SESSION_NUMBER] == np.int64
    assert v.validate_tables(cohort.sessions, cohort.clients, WAI_SR).problems == ()

    assert cohort.quarantine_files == {
        "sessions": qdir / "sessions.quarantine.csv",
        "clients": qdir / "clients.quarantine.csv",
    }
    qs = pd.read_csv(qdir / "sessions.quarantine.csv", dtype=str, keep_default_na=False)
    assert qs["client_id"].tolist() == ["007", "007", "007", "012", "012", "999"]
    assert qs["_row"].tolist() == ["1", "2", "3", "4", "5", "7"]
    assert qs["alliance_goal"].tolist()[2] == "7"  # as read
    assert qs["_reasons"].tolist() == [
        tio.EPISODE_QUARANTINED,
        tio.EPISODE_QUARANTINED,
        f"alliance_goal: {v.rating_out_of_range(WAI_SR)}",
        tio.EPISODE_QUARANTINED,
        tio.EPISODE_QUARANTINED,
        f"client_id: {v.UNKNOWN_CLIENT}",
    ]
    qc = pd.read_csv(qdir / "clients.quarantine.csv", dtype=str, keep_default_na=False)
    assert list(qc.columns) == [*tio.read_table(cl).columns, "_row", "_reasons"]
    assert qc["client_id"].tolist() == ["007", "012"]
    assert qc["_reasons"].tolist() == [tio.EPISODE_QUARANTINED, f"outcome: {v.UNKNOWN_OUTCOME}"]


def test_quarantine_default_dir_and_clean_input_writes_header_only_files(tmp_path: Path) -> None:
    cohort = tio.load_cohort(*write(tmp_path), on_error="quarantine")
    assert cohort.sessions_quarantined == 0 and len(cohort.sessions) == 6
    qs = tmp_path / "quarantine" / "sessions.quarantine.csv"
    assert qs.read_text().splitlines() == [SESSIONS_CSV.splitlines()[0] + ",_row,_reasons"]


def test_warnings_do_not_quarantine(tmp_path: Path) -> None:
    s, cl = write(tmp_path, clients=CLIENTS_CSV + "555,K01,T01,2024-03-01,ongoing,,,\n")
    cohort = tio.load_cohort(s, cl, on_error="quarantine")
    assert cohort.clients_quarantined == 0 and len(cohort.clients) == 4
    assert [p.reason for p in cohort.report.warnings] == [v.NO_SESSIONS]


# --------------------------------------------------------------------------------------------
# format_problem and the problem report
# --------------------------------------------------------------------------------------------


def test_format_problem() -> None:
    files = {"sessions": Path("/data/x/sessions.csv"), "clients": Path("clients.parquet")}
    row = v.Problem("sessions", 11, "attendance", v.UNKNOWN_ATTENDANCE)
    assert tio.format_problem(row, files) == (
        f"sessions.csv row 12 (line 13), column attendance: {v.UNKNOWN_ATTENDANCE}"
    )
    pq = v.Problem("clients", 0, "age", v.AGE_INVALID)
    assert tio.format_problem(pq, files) == f"clients.parquet row 1, column age: {v.AGE_INVALID}"
    table = v.Problem("clients", None, "outcome", v.MISSING_COLUMN)
    assert tio.format_problem(table, files) == f"clients.parquet column outcome: {v.MISSING_COLUMN}"
    warn = v.Problem("clients", 2, "client_id", v.NO_SESSIONS, "warning")
    assert tio.format_problem(warn) == f"warning: clients row 3, column client_id: {v.NO_SESSIONS}"


def test_problem_report_csv(tmp_path: Path) -> None:
    s, cl = write(tmp_path, edit(SESSIONS_CSV, 3, "attendance", "x"))
    with pytest.raises(tio.ContractError) as err:
        tio.load_cohort(s, cl)
    out = tio.write_problem_report(
        err.value.report, tmp_path / "r" / "problems.csv", err.value.files
    )
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [
        ["table", "row", "line", "column", "severity", "reason"],
        ["sessions", "2", "3", "attendance", "error", v.UNKNOWN_ATTENDANCE],
    ]


# --------------------------------------------------------------------------------------------
# Privacy: no identifier, rating or date in messages or logs
# --------------------------------------------------------------------------------------------

SECRETS = {
    "client_id": "ZQX4417",
    "rating": "987.65",
    "date": "1987-06-05",
    "code": "SECRETCODE",
    "number": "4444.5",
    "clinic": "KZ31337",
}


def test_no_cell_value_in_messages_files_of_problems_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sessions = edit(SESSIONS_CSV, 2, "client_id", SECRETS["client_id"])
    sessions = edit(sessions, 3, "alliance_bond", SECRETS["rating"])
    sessions = edit(sessions, 4, "session_date", SECRETS["date"])
    sessions = edit(sessions, 5, "attendance", SECRETS["code"])
    sessions = edit(sessions, 6, "session_number", SECRETS["number"])
    sessions = edit(sessions, 7, "clinic_id", SECRETS["clinic"])
    s, cl = write(tmp_path, sessions)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(tio.ContractError) as err:
        tio.load_cohort(s, cl)
    report_csv = tio.write_problem_report(err.value.report, tmp_path / "p.csv", err.value.files)
    cohort = tio.load_cohort(s, cl, on_error="quarantine")
    assert cohort.sessions_quarantined == 6
    # The rating also sits on a no-show, and the 1987 date also goes backwards.
    assert len(err.value.report.errors) == 8
    texts = {
        "error": str(err.value),
        "logs": caplog.text,
        "report": report_csv.read_text(),
        "reasons": "\n".join(p.reason for p in err.value.report.problems),
    }
    assert caplog.records, "expected count logs"
    for where, text in texts.items():
        for value in SECRETS.values():
            assert value not in text, f"{value} leaked into {where}"
