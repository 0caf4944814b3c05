"""``alliance-risk validate`` through the real console-script app."""

from __future__ import annotations

import csv
import typing
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from features import validation as v
from features.profiles import PROFILES
from tests.training.test_io import CLIENTS_CSV, SESSIONS_CSV, edit, write
from training.commands import common

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # rich wraps at 80 columns otherwise


def run(*args: str | Path) -> tuple[int, str]:
    """Exit code and what the user sees: the tables (stdout) and the verdict or error (stderr)."""
    result = runner.invoke(app, ["validate", *map(str, args)], env=WIDE)
    return result.exit_code, result.output


def test_clean_files_exit_0(tmp_path: Path) -> None:
    s, cl = write(tmp_path)
    code, out = run("--sessions", s, "--clients", cl)
    assert code == 0, out
    assert "OK: read 6 session rows and 3 client rows; 0 errors, 0 warnings." in out


def test_warnings_still_exit_0(tmp_path: Path) -> None:
    s, cl = write(tmp_path, clients=CLIENTS_CSV + "555,K01,T01,2024-03-01,ongoing,,,\n")
    code, out = run("--sessions", s, "--clients", cl)
    assert code == 0, out
    assert v.NO_SESSIONS in out and "1 warnings" in out


def test_errors_exit_1_with_tables_and_full_csv_report(tmp_path: Path) -> None:
    sessions = edit(SESSIONS_CSV, 3, "attendance", "SECRETCODE")
    sessions = edit(sessions, 7, "clinic_id", "KZ31337")
    s, cl = write(tmp_path, sessions)
    report = tmp_path / "out" / "problems.csv"
    code, out = run("--sessions", s, "--clients", cl, "--report", report, "--show", "1")
    assert code == 1, out
    assert "First 1 of 2 problems" in out
    assert "Problems by table, column and reason" in out
    assert "FAILED: 2 errors, 0 warnings." in out
    assert "SECRETCODE" not in out and "KZ31337" not in out
    with report.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [
        ["table", "row", "line", "column", "severity", "reason"],
        ["sessions", "2", "3", "attendance", "error", v.UNKNOWN_ATTENDANCE],
        ["sessions", "6", "7", "clinic_id", "error", v.CLINIC_MISMATCH],
    ]


def test_quarantine_mode_exits_0_and_reports_counts(tmp_path: Path) -> None:
    s, cl = write(tmp_path, edit(SESSIONS_CSV, 3, "attendance", "gone"))
    qdir = tmp_path / "q"
    code, out = run(
        "--sessions", s, "--clients", cl, "--on-error", "quarantine", "--quarantine-dir", qdir
    )
    assert code == 0, out
    assert "Quarantined 3 of 6 session rows and 1 of 3 client rows" in out
    assert "Continuing with 3 session rows and 2 client rows (wai_sr profile)." in out
    assert (qdir / "sessions.quarantine.csv").read_text().count("\n") == 1 + 3
    assert (qdir / "clients.quarantine.csv").read_text().count("\n") == 1 + 1


def test_table_level_error_exits_1_even_in_quarantine_mode(tmp_path: Path) -> None:
    s, cl = write(tmp_path)
    code, out = run(
        "--sessions", s, "--clients", cl, "--profile", "srs", "--on-error", "quarantine"
    )
    assert code == 1, out
    assert v.MISSING_COLUMN in out
    assert "cannot be quarantined" in out


def test_unreadable_input_exits_2(tmp_path: Path) -> None:
    s, _ = write(tmp_path)
    code, out = run("--sessions", s, "--clients", tmp_path / "missing.csv")
    assert code == 2
    assert "Cannot read input" in out and "no such file" in out


def test_unknown_profile_is_a_usage_error(tmp_path: Path) -> None:
    s, cl = write(tmp_path)
    result = runner.invoke(
        app, ["validate", "--sessions", str(s), "--clients", str(cl), "--profile", "phq9"], env=WIDE
    )
    assert result.exit_code == 2


def test_profile_choices_are_the_known_profiles() -> None:
    assert set(typing.get_args(common.ProfileName)) == set(PROFILES)


def test_help_documents_every_option() -> None:
    result = runner.invoke(app, ["validate", "--help"], env=WIDE)
    assert result.exit_code == 0
    for option in (
        "--sessions",
        "--clients",
        "--profile",
        "--on-error",
        "--quarantine-dir",
        "--report",
        "--show",
    ):
        assert option in result.stdout
    assert "Exit 0 when clean" in result.stdout
