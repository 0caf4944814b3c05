"""Unreadable inputs and unwritable outputs on the command line: exit 2, one clear line, no
traceback, and outputs checked before any work is done."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.training.test_io import SESSIONS_CSV, edit, write

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # rich wraps at 80 columns otherwise
MODEL = "models:/alliance-risk@champion"


def invoke(args: list[str | Path], tmp_path: Path) -> tuple[int, str]:
    # Any tracking store a command might open stays inside the test's folder.
    env = {**WIDE, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = runner.invoke(app, [str(a) for a in args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def broken_deflate(text: str) -> bytes:
    """A gzip file whose first deflate block holds ``text`` and whose next block is invalid."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(text.encode()) + deflate.flush(zlib.Z_FULL_FLUSH)
    # 0x07: final block of the reserved type 3, which every inflater refuses.
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + b"\x07" + bytes(16)


def truncated(text: str) -> bytes:
    whole = gzip.compress((text * 40).encode())
    return whole[: len(whole) // 2]


CORRUPTIONS = {
    "broken-deflate": (broken_deflate, "corrupt gzip data (invalid block type)"),
    "truncated": (truncated, "truncated gzip file"),
}
COMMANDS = {
    "validate": ["validate"],
    "train": ["train"],
    "score": ["score", "--model", MODEL, "--out", "scores.csv"],
}


def _command(command: str, sessions: Path, clients: Path, tmp_path: Path) -> list[str | Path]:
    """``command``'s arguments with these input files; ``score`` writes into ``tmp_path``."""
    args: list[str | Path] = [*COMMANDS[command], "--sessions", sessions, "--clients", clients]
    if command == "score":
        args[args.index("scores.csv")] = tmp_path / "scores.csv"
    return args


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_corrupt_gzip_input_exits_2_with_the_file_and_reason(
    tmp_path: Path, command: str, corruption: str
) -> None:
    make, reason = CORRUPTIONS[corruption]
    _, clients = write(tmp_path)
    sessions = tmp_path / "sessions.csv.gz"
    sessions.write_bytes(make(SESSIONS_CSV))
    code, out = invoke(_command(command, sessions, clients, tmp_path), tmp_path)
    assert code == 2, out
    assert f"Cannot read input: sessions.csv.gz: {reason}" in out
    assert "Aborted" not in out


@pytest.mark.parametrize("table", ["sessions", "clients"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_folder_as_input_is_a_one_line_read_error(
    tmp_path: Path, command: str, table: str
) -> None:
    sessions, clients = write(tmp_path)
    folder = tmp_path / f"{table}.csv"
    given = {"sessions": sessions, "clients": clients}
    given[table].unlink()
    folder.mkdir()
    code, out = invoke(_command(command, given["sessions"], given["clients"], tmp_path), tmp_path)
    assert code == 2, out
    assert f"Cannot read input: {table}.csv: is a folder" in out
    assert "Usage:" not in out


def test_mixed_encoding_names_line_and_byte(tmp_path: Path) -> None:
    sessions, clients = write(tmp_path)
    latin1_line = "007,K01,T01,4,2024-01-23,attended,4,4,5\n".replace("T01", "T\u00e91")
    sessions.write_bytes(SESSIONS_CSV.encode() + latin1_line.encode("latin-1"))
    code, out = invoke(["validate", "--sessions", sessions, "--clients", clients], tmp_path)
    assert code == 2, out
    assert "Cannot read input: sessions.csv: not UTF-8 text at line 8, byte 10 of the line" in out


def blocked(tmp_path: Path) -> Path:
    """A folder that cannot be created, even by root: its parent is a regular file."""
    plain = tmp_path / "plain-file"
    plain.write_text("x")
    return plain / "sub"


def test_score_out_unwritable_exits_2_before_loading(tmp_path: Path) -> None:
    _, clients = write(tmp_path)
    out = blocked(tmp_path) / "scores.csv"
    # The sessions file does not exist: the output is checked first, before any input is read.
    code, text = invoke(
        ["score", "--model", MODEL, "--sessions", tmp_path / "nope.csv", "--clients", clients,
         "--out", out],
        tmp_path,
    )  # fmt: skip
    assert code == 2, text
    assert f"Cannot write output: --out {out}: {tmp_path / 'plain-file'} is not a folder" in text
    assert "Cannot read input" not in text


def test_validate_report_unwritable_exits_2_before_validating(tmp_path: Path) -> None:
    s, cl = write(tmp_path, edit(SESSIONS_CSV, 3, "attendance", "gone"))
    report = blocked(tmp_path) / "problems.csv"
    code, text = invoke(
        ["validate", "--sessions", s, "--clients", cl, "--report", report], tmp_path
    )
    assert code == 2, text
    assert f"Cannot write output: --report {report}" in text
    assert "FAILED" not in text  # nothing was validated


@pytest.mark.parametrize("command", ["validate", "score"])
def test_unwritable_quarantine_dir_is_an_output_error(tmp_path: Path, command: str) -> None:
    s, cl = write(tmp_path, edit(SESSIONS_CSV, 3, "attendance", "gone"))
    qdir = blocked(tmp_path)
    args: list[str | Path] = [command, "--sessions", s, "--clients", cl]
    if command == "score":
        args += ["--model", MODEL, "--out", tmp_path / "scores.csv"]
    code, text = invoke([*args, "--on-error", "quarantine", "--quarantine-dir", qdir], tmp_path)
    assert code == 2, text
    assert f"Cannot write output: --quarantine-dir {qdir}" in text
    assert "Cannot read input" not in text


def test_default_quarantine_dir_is_checked_too(tmp_path: Path) -> None:
    s, cl = write(tmp_path, edit(SESSIONS_CSV, 3, "attendance", "gone"))
    (tmp_path / "quarantine").write_text("a file where the folder would go")
    code, text = invoke(
        ["validate", "--sessions", s, "--clients", cl, "--on-error", "quarantine"], tmp_path
    )
    assert code == 2, text
    assert "Cannot write output: --quarantine-dir (default)" in text
    assert "it exists and is not a folder" in text


def _wrong_kind(tmp_path: Path) -> dict[str, tuple[list[str | Path], str, Path]]:
    """Outputs given a path of the wrong kind: (arguments, option, path), per case."""
    s, cl = write(tmp_path, edit(SESSIONS_CSV, 3, "attendance", "gone"))
    folder = tmp_path / "data"
    folder.mkdir()
    plain = tmp_path / "version"
    plain.write_text("a file, as /proc/version")
    score = ["score", "--model", MODEL, "--sessions", s, "--clients", cl]
    return {
        "score --out folder": ([*score, "--out", folder], "--out", folder),
        "validate --report folder": (
            ["validate", "--sessions", s, "--clients", cl, "--report", folder], "--report", folder,
        ),
        "--quarantine-dir file": (
            [*score, "--out", tmp_path / "scores.csv", "--on-error", "quarantine",
             "--quarantine-dir", plain],
            "--quarantine-dir", plain,
        ),
        "simulate --out file": (["simulate", "--clients", "5", "--out", plain], "--out", plain),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["score --out folder", "validate --report folder", "--quarantine-dir file",
     "simulate --out file"],
)  # fmt: skip
def test_an_output_of_the_wrong_kind_gets_the_one_line_output_error(
    tmp_path: Path, case: str
) -> None:
    args, option, path = _wrong_kind(tmp_path)[case]
    code, text = invoke(args, tmp_path)
    assert code == 2, text
    kind = "it is a folder" if path.is_dir() else "it exists and is not a folder"
    assert f"Cannot write output: {option} {path}: {kind}" in text
    assert "Usage:" not in text and "Invalid value" not in text
