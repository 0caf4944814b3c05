"""Writing cohorts to files (CSV and Parquet, the simulation marker) and the ``simulate``
command."""

from __future__ import annotations

import re
from typing import get_args

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from features import contract as c
from features.profiles import PROFILES
from training.commands import simulate as simulate_command
from training.simulate import is_simulated, simulate_cohort, write_cohort

# --- I/O and CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_write_cohort_round_trips(tmp_path, fmt: str) -> None:
    cohort = simulate_cohort(200, seed=4, profile="wai_sr")
    written = write_cohort(cohort, tmp_path / "out", fmt=fmt, with_latent=True)
    assert set(written) == {"sessions", "clients", "latent", "ruptures", "simulation"}
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    sessions = read(written["sessions"])
    assert len(sessions) == len(cohort.sessions)
    assert sessions[c.CLIENT_ID].tolist() == cohort.sessions[c.CLIENT_ID].tolist()
    np.testing.assert_array_equal(
        sessions["alliance_bond"].to_numpy(), cohort.sessions["alliance_bond"].to_numpy()
    )
    if fmt == "csv":
        first_line = written["clients"].read_text().splitlines()[1]
        assert re.search(r",\d{4}-\d{2}-\d{2},", first_line)  # ISO dates, no time part
    # The files load through the contract's reader and validator without a problem.
    io = pytest.importorskip("training.io")
    loaded = io.load_cohort(written["sessions"], written["clients"], profile="wai_sr")
    assert len(loaded.sessions) == len(cohort.sessions)
    plain = write_cohort(cohort, tmp_path / "plain", fmt=fmt)
    assert set(plain) == {"sessions", "clients", "simulation"}
    assert is_simulated(plain["sessions"]) and not is_simulated(tmp_path / "elsewhere.csv")
    with pytest.raises(ValueError, match="fmt must be"):
        write_cohort(cohort, tmp_path, fmt="xlsx")  # type: ignore[arg-type]


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root so that ``simulate`` is a subcommand."""

    simulate_command.register(app)
    return app


def test_cli_profile_choices_match_the_profiles() -> None:
    assert set(get_args(simulate_command.ProfileName)) == set(PROFILES)


def test_cli_help_lists_every_option() -> None:
    result = CliRunner().invoke(_cli(), ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--clients",
        "--seed",
        "--out",
        "--profile",
        "--dropout-rate",
        "--format",
        "--with-latent",
    ):
        assert option in result.output


def test_cli_writes_files_and_prints_summary(tmp_path) -> None:
    out = tmp_path / "cohort"
    result = CliRunner().invoke(
        _cli(),
        ["simulate", "--clients", "300", "--seed", "3", "--out", str(out), "--profile", "srs"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert (out / "sessions.csv").exists() and (out / "clients.csv").exists()
    assert not (out / "latent.csv").exists()
    assert "300" in result.output and "dropout share of ended episodes" in result.output
    clients = pd.read_csv(out / "clients.csv")
    assert len(clients) == 300


def test_cli_rejects_out_of_range_dropout_rate(tmp_path) -> None:
    result = CliRunner().invoke(
        _cli(), ["simulate", "--out", str(tmp_path), "--dropout-rate", "0.95"]
    )
    assert result.exit_code != 0
    assert not (tmp_path / "sessions.csv").exists()
