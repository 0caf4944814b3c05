"""Command-line conventions: --version, shell completion, readable help, default model URI."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.training.test_io import write

runner = CliRunner()
WIDE = {"COLUMNS": "250"}
COMMANDS = ["simulate", "validate", "train", "evaluate", "score", "promote", "monitor", "serve", "token",
            "apikey", "apikey create", "apikey list", "db", "db upgrade", "db current",
            "db downgrade", "db rescore", "audit", "audit ref"]  # fmt: skip


def test_version_prints_the_installed_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"alliance-risk {version('alliance-risk')}\n"


def test_shell_completion_script_is_offered() -> None:
    result = runner.invoke(app, ["--show-completion", "bash"])
    assert result.exit_code == 0, result.output
    assert "_ALLIANCE_RISK_COMPLETE=complete_bash" in result.output
    assert "complete -o default -F _alliance_risk_completion alliance-risk" in result.output
    top = runner.invoke(app, ["--help"], env=WIDE).output
    assert "--install-completion" in top and "--show-completion" in top and "--version" in top


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_flags_show_no_value_placeholder(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output
    # Docstrings are the help text: no reStructuredText markup reaches the terminal.
    assert "``" not in result.output and ":func:" not in result.output


def test_options_that_take_values_keep_their_placeholder() -> None:
    result = runner.invoke(app, ["score", "--help"], env=WIDE)
    assert "<file>" in result.output and "<int range>" in result.output


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_model_defaults_to_the_champion(
    command: str, tmp_path: Path, mlflow_sqlite_uri: str
) -> None:
    s, cl = write(tmp_path)
    args = [command, "--sessions", str(s), "--clients", str(cl)]
    if command == "score":
        args += ["--out", str(tmp_path / "scores.csv")]
    result = runner.invoke(app, args, env={**WIDE, "MLFLOW_TRACKING_URI": mlflow_sqlite_uri})
    # An empty registry: the command got as far as loading the default model URI.
    assert result.exit_code == 2, result.output
    assert "Cannot load model models:/alliance-risk@champion" in result.output
    help_text = runner.invoke(app, [command, "--help"], env=WIDE).output
    assert "[default: models:/alliance-risk@champion]" in help_text


def _blocked(tmp_path: Path) -> Path:
    """A path no one can create, root included: its parent is a regular file."""
    plain = tmp_path / "plain-file"
    plain.write_text("x")
    return plain / "sub"


# One representative error of each command: (arguments, start of the message).
ERRORS = {
    "simulate": (["simulate", "--clients", "5", "--out", "{blocked}"], "Cannot write output"),
    "validate": (["validate", "--sessions", "{missing}", "--clients", "{clients}"],
                 "Cannot read input"),
    "train": (["train", "--sessions", "{missing}", "--clients", "{clients}"],
              "Cannot read input"),
    "evaluate": (["evaluate", "--sessions", "{missing}", "--clients", "{clients}"],
                 "Cannot read input"),
    "score": (["score", "--sessions", "{sessions}", "--clients", "{clients}",
               "--out", "{blocked}/scores.csv"], "Cannot write output"),
    "promote": (["promote", "--force"], "--force needs --reason"),
    "token": (["token", "--clinic", "north", "--scope", "risk:everything", "--key-dir",
               "{tmp}/keys"], "unknown scope"),
    "apikey": (["apikey", "create", "--keys-file", "{tmp}/keys.json", "--clinic", "north",
                "--scope", "risk:everything"], "unknown scope"),
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(ERRORS))
def test_errors_go_to_stderr_and_leave_stdout_empty(command: str, tmp_path: Path) -> None:
    sessions, clients = write(tmp_path)
    names = {"blocked": _blocked(tmp_path), "missing": tmp_path / "nope.csv", "tmp": tmp_path,
             "sessions": sessions, "clients": clients}  # fmt: skip
    args, message = ERRORS[command]
    env = {**WIDE, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = runner.invoke(app, [a.format(**names) for a in args], env=env)
    assert result.exit_code in (1, 2), result.output
    assert message in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_validate_tables_go_to_stdout_and_the_verdict_to_stderr(tmp_path: Path) -> None:
    from tests.training.test_io import SESSIONS_CSV, edit

    s, cl = write(tmp_path, edit(SESSIONS_CSV, 3, "attendance", "gone"))
    result = runner.invoke(app, ["validate", "--sessions", str(s), "--clients", str(cl)], env=WIDE)
    assert result.exit_code == 1, result.output
    assert "Problems by table, column and reason" in result.stdout
    assert "FAILED" in result.stderr and "FAILED" not in result.stdout


def test_a_contract_error_in_train_goes_to_stderr(tmp_path: Path) -> None:
    from tests.training.test_io import SESSIONS_CSV, edit

    s, cl = write(tmp_path, edit(SESSIONS_CSV, 3, "attendance", "gone"))
    env = {**WIDE, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = runner.invoke(app, ["train", "--sessions", str(s), "--clients", str(cl)], env=env)
    assert result.exit_code == 1, result.output
    assert "alliance-risk validate" in result.stderr
    assert result.stdout == ""


def test_token_messages_show_square_brackets_literally(tmp_path: Path) -> None:
    # rich would take "[bold]" for markup and drop it from the message.
    args = ["token", "--clinic", "[red]north", "--key-dir", str(tmp_path / "keys")]
    refused = runner.invoke(app, [*args, "--scope", "[bold]risk"], env=WIDE)
    assert refused.exit_code == 2 and "[bold]risk" in refused.stderr
    minted = runner.invoke(app, [*args, "--scope", "risk:read"], env=WIDE)
    assert minted.exit_code == 0, minted.output
    assert "clinic '[red]north'" in minted.stderr


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_token_with_an_unusable_key_dir_is_a_one_line_error(tmp_path: Path, where: str) -> None:
    key_dir = _blocked(tmp_path)
    if where == "a file":
        key_dir = key_dir.parent
    args = ["token", "--clinic", "north", "--scope", "risk:read", "--key-dir", str(key_dir)]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Cannot write output: --key-dir {key_dir}: ")
    assert result.stdout == "" and "Usage:" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
