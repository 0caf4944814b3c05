"""The simulator's drift scenarios: what they change, where and from when, and nothing else."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from training.simulate import SimulationConfig, simulate_cohort

N, SEED, CLINIC, FROM = 1500, 3, "K02", date(2023, 1, 1)


@pytest.fixture(scope="module")
def base():
    return simulate_cohort(N, seed=SEED)


def _ratings(frame: pd.DataFrame) -> list[str]:
    return [col for col in frame.columns if col.startswith("alliance_")]


def test_a_rating_shift_moves_only_the_clinic_from_the_date(base) -> None:
    cfg = SimulationConfig(drift_clinic=CLINIC, drift_from=FROM, rating_shift=-1.0)
    drifted = simulate_cohort(N, seed=SEED, config=cfg)
    pd.testing.assert_frame_equal(drifted.clients, base.clients)  # outcomes do not follow
    cols = _ratings(base.sessions)
    hit = (base.sessions["clinic_id"] == CLINIC) & (
        base.sessions["session_date"] >= pd.Timestamp(FROM)
    )
    pd.testing.assert_frame_equal(drifted.sessions[~hit], base.sessions[~hit])
    before = base.sessions.loc[hit, cols].to_numpy()
    after = drifted.sessions.loc[hit, cols].to_numpy()
    np.testing.assert_allclose(after, np.clip(before - 1.0, 0.0, 10.0))
    assert np.nanmean(before - after) > 0.9


def test_an_instrument_change_empties_the_elements_srs_lacks(base) -> None:
    cfg = SimulationConfig(drift_clinic=CLINIC, drift_from=FROM, instrument_change="srs")
    drifted = simulate_cohort(N, seed=SEED, config=cfg)
    hit = (base.sessions["clinic_id"] == CLINIC) & (
        base.sessions["session_date"] >= pd.Timestamp(FROM)
    )
    lost = ["alliance_acceptance", "alliance_trust"]
    kept = [c for c in _ratings(base.sessions) if c not in lost]
    assert drifted.sessions.loc[hit, lost].isna().all().all()
    pd.testing.assert_frame_equal(drifted.sessions[kept], base.sessions[kept])
    pd.testing.assert_frame_equal(drifted.sessions[~hit], base.sessions[~hit])


def test_more_no_shows_at_one_clinic_raise_its_no_show_share(base) -> None:
    drifted = simulate_cohort(
        N, seed=SEED, config=SimulationConfig(drift_clinic=CLINIC, noshow_log_odds=1.0)
    )

    def share(cohort) -> pd.Series:
        s = cohort.sessions
        return (s["attendance"] == "no_show").groupby(s["clinic_id"]).mean()

    before, after = share(base), share(drifted)
    assert after[CLINIC] > 1.6 * before[CLINIC]
    others = [k for k in before.index if k != CLINIC]
    assert (abs(after[others] - before[others]) < 0.02).all()
    # No extra random draw: every intake quantity but the outcome is the undrifted one.
    pd.testing.assert_frame_equal(
        drifted.clients.drop(columns="outcome"), base.clients.drop(columns="outcome")
    )


def test_an_unknown_clinic_is_refused_by_the_config_and_the_cli(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="K01, K02"):
        SimulationConfig(drift_clinic="K9")
    result = CliRunner().invoke(
        app, ["simulate", "--out", str(tmp_path / "o"), "--clients", "20", "--drift-clinic", "X"]
    )
    assert result.exit_code == 2 and "drift_clinic" in result.output


def test_the_cli_flags_reach_the_tables(tmp_path: Path) -> None:
    args = ["simulate", "--clients", "300", "--seed", "4", "--out"]
    plain = CliRunner().invoke(app, [*args, str(tmp_path / "a")])
    shifted = CliRunner().invoke(
        app, [*args, str(tmp_path / "b"), "--drift-clinic", CLINIC, "--drift-from", "2023-01-01",
              "--instrument-change", "srs"],
    )  # fmt: skip
    assert plain.exit_code == 0 and shifted.exit_code == 0, shifted.output
    a = pd.read_csv(tmp_path / "a" / "sessions.csv")
    b = pd.read_csv(tmp_path / "b" / "sessions.csv")
    hit = (a["clinic_id"] == CLINIC) & (pd.to_datetime(a["session_date"]) >= pd.Timestamp(FROM))
    assert b.loc[hit, "alliance_trust"].isna().all() and a.loc[hit, "alliance_trust"].notna().any()
