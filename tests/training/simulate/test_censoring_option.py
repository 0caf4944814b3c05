"""Heavy, intake-date-dependent censoring (``enrolment_days``) and the fully followed truth."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from features import contract as c
from tests.training.simulate.test_io_cli import _cli
from training.simulate import SimulationConfig, simulate_cohort, simulate_truth

_HEAVY = SimulationConfig(enrolment_days=300)


@pytest.fixture(scope="module")
def censored_and_truth() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    censored = simulate_cohort(3000, seed=11, config=_HEAVY)
    truth = simulate_truth(3000, seed=11, config=_HEAVY)
    return censored.sessions, censored.clients, truth.sessions, truth.clients


def test_short_enrolment_censors_a_quarter_to_two_fifths(censored_and_truth) -> None:
    _, clients, _, _ = censored_and_truth
    ongoing = (clients[c.OUTCOME] == c.ONGOING).mean()
    assert 0.25 <= ongoing <= 0.40
    default = simulate_cohort(3000, seed=11).clients
    assert (default[c.OUTCOME] == c.ONGOING).mean() < 0.15


def test_censoring_depends_on_intake_date(censored_and_truth) -> None:
    _, clients, _, truth = censored_and_truth
    recent = clients[c.INTAKE_DATE] >= clients[c.INTAKE_DATE].quantile(0.75)
    ongoing = clients[c.OUTCOME] == c.ONGOING
    assert ongoing[recent].mean() > 0.7 and ongoing[~recent].mean() < 0.25
    # The recent intakes that have ended are mostly the short episodes: dropouts are
    # over-represented among them compared with how those clients eventually turn out.
    ended_recent = recent & ~ongoing
    observed = (clients.loc[ended_recent, c.OUTCOME] == c.DROPOUT).mean()
    eventual = (truth.loc[recent, c.OUTCOME] == c.DROPOUT).mean()
    assert observed > eventual + 0.1


def test_truth_is_the_same_episodes_followed_to_the_end(censored_and_truth) -> None:
    sessions, clients, truth_sessions, truth_clients = censored_and_truth
    assert not (truth_clients[c.OUTCOME] == c.ONGOING).any()
    pd.testing.assert_frame_equal(
        truth_clients.drop(columns=c.OUTCOME), clients.drop(columns=c.OUTCOME)
    )
    ended = clients[c.OUTCOME] != c.ONGOING
    assert (truth_clients.loc[ended, c.OUTCOME] == clients.loc[ended, c.OUTCOME]).all()
    # Every appointment of the extract is in the truth unchanged; the truth adds later ones.
    extract_end = sessions[c.SESSION_DATE].max()
    before = truth_sessions[truth_sessions[c.SESSION_DATE] <= extract_end]
    pd.testing.assert_frame_equal(before.reset_index(drop=True), sessions)
    assert len(truth_sessions) > len(sessions)


def test_enrolment_days_must_be_positive() -> None:
    with pytest.raises(ValueError, match="enrolment_days must be >= 1"):
        SimulationConfig(enrolment_days=0)


def test_cli_writes_a_censored_cohort_and_its_truth_apart(tmp_path) -> None:
    out = tmp_path / "cohort"
    result = CliRunner().invoke(
        _cli(),
        ["simulate", "--clients", "400", "--seed", "5", "--out", str(out)]
        + ["--enrolment-days", "300", "--with-truth"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    clients = pd.read_csv(out / "clients.csv")
    truth = pd.read_csv(out / "truth" / "clients.csv")
    assert (clients[c.OUTCOME] == c.ONGOING).mean() > 0.2
    assert (truth[c.OUTCOME] != c.ONGOING).all()
    assert truth[c.CLIENT_ID].tolist() == clients[c.CLIENT_ID].tolist()
    assert (out / "truth" / "sessions.csv").exists()
    # Without the flag nothing else is written.
    plain = tmp_path / "plain"
    result = CliRunner().invoke(_cli(), ["simulate", "--clients", "50", "--out", str(plain)])
    assert result.exit_code == 0, result.output
    assert not (plain / "truth").exists()
