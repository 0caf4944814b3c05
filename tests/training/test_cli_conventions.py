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
COMMANDS = ["simulate", "validate", "train", "evaluate", "score", "promote", "serve", "token",
            "apikey", "apikey create", "apikey list"]  # fmt: skip


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
