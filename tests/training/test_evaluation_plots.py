"""The evaluation's plots and tables say what the metrics say: weighted for censoring as the
test metrics are (calibration plots and tables, ROC/PR legends, risk bands, baselines), with
the alert rule in every decision curve, and titled with what was evaluated."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.build import build_features
from features.contract import CLIENT_ID
from features.profiles import get_profile
from features.registry import feature_registry
from models.booster import SearchSpace
from models.scorer import HighBandRule, RiskBands
from training import metrics, report_plots
from training.baselines import alert_flags, fit_alert_rule, fit_logistic, rule_columns
from training.commands.evaluate import evaluated_population
from training.decision import ALERT_RULE, calibration_ci, decision_support, subgroup_calibration
from training.pipeline import TrainConfig, train_model
from training.promotion import evaluate_on
from training.simulate import SimulationConfig, simulate_cohort


def _weighted(n: int = 3000, seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcomes, probabilities and censoring-like weights (1..6, larger for some events) whose
    weighted metrics differ from the unweighted ones in the third decimal."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.7, n)
    y = (rng.random(n) < p).astype(float)
    w = np.where((y == 1) & (p < 0.3), 6.0, 1.0) * rng.uniform(1.0, 1.5, n)
    return y, p, w


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Every figure the plot functions save, by file name (the real PNG is still written)."""
    saved: dict[str, Any] = {}
    original = report_plots._save

    def keep(fig: Any, out_dir: Path | str, filename: str) -> Path:
        saved[filename] = fig
        return original(fig, out_dir, filename)

    monkeypatch.setattr(report_plots, "_save", keep)
    yield saved


def _texts(fig: Any) -> list[str]:
    """Every title, suptitle and legend text of a figure."""
    out = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    for ax in fig.axes:
        out.append(ax.get_title())
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return out


# --------------------------------------------------------------------------- units


def test_calibration_ci_weights_its_points_as_the_metrics_do() -> None:
    y, p, w = _weighted()
    table = calibration_ci(y, p, 10, w=w)
    bins = pd.qcut(p, 10, labels=False)
    for row in table.itertuples(index=False):
        mask = bins == row.bin - 1
        assert row.observed_rate == pytest.approx(np.average(y[mask], weights=w[mask]))
        assert row.mean_predicted == pytest.approx(np.average(p[mask], weights=w[mask]))
        assert row.n == mask.sum()
        # The weights cost precision: fewer effective rows than the bin has.
        assert row.effective_n <= metrics.kish_effective_n(w[mask]) + 0.5
        assert row.ci_low <= row.observed_rate <= row.ci_high
    # Equal weights are the unweighted table.
    pd.testing.assert_frame_equal(calibration_ci(y, p, 10, w=np.ones(y.size)), calibration_ci(y, p))


def test_subgroup_calibration_is_weighted_and_gives_each_group_its_effective_n() -> None:
    y, p, w = _weighted()
    frame = pd.DataFrame({"gender": np.where(np.arange(y.size) % 3 == 0, "f", "m")})
    table = subgroup_calibration(y, p, frame, by=("gender",), w=w)
    for group, part in table.groupby("group"):
        mask = (frame["gender"] == group).to_numpy()
        assert part["group_effective_n"].iloc[0] == pytest.approx(metrics.kish_effective_n(w[mask]))
        expected = calibration_ci(y[mask], p[mask], 5, cluster=np.arange(y.size)[mask], w=w[mask])
        np.testing.assert_allclose(part["observed_rate"], expected["observed_rate"])


def test_roc_and_pr_legends_are_the_weighted_metrics(tmp_path: Path, figures: dict) -> None:
    y, p, w = _weighted()
    auroc, auprc = metrics.auroc(y, p, w), metrics.auprc(y, p, w)
    # The weights must matter at the legend's precision, or this test proves nothing.
    assert f"{auroc:.3f}" != f"{metrics.auroc(y, p):.3f}"
    assert f"{auprc:.3f}" != f"{metrics.auprc(y, p):.3f}"
    report_plots.plot_roc({"model": (y, p)}, tmp_path, weight=w)
    report_plots.plot_pr({"model": (y, p)}, tmp_path, weight=w)
    assert f"model (AUROC {auroc:.3f})" in _texts(figures["roc.png"])
    pr = _texts(figures["pr.png"])
    assert f"model (AUPRC {auprc:.3f})" in pr
    assert f"dropout rate per landmark row {np.average(y, weights=w):.3f}" in pr
    caption = f"effective n {metrics.kish_effective_n(w):,.0f} of {y.size:,} rows"
    assert caption in figures["roc.png"].axes[0].get_title()


def test_calibration_png_draws_the_weighted_reliability_table(
    tmp_path: Path, figures: dict
) -> None:
    y, p, w = _weighted()
    report_plots.plot_calibration(y, p, tmp_path, weight=w)
    top = figures["calibration.png"].axes[0]
    line = next(ln for ln in top.get_lines() if ln.get_label().startswith("model"))
    table = metrics.reliability_table(y, p, 10, w=w)
    seen = table["n"] > 0
    np.testing.assert_allclose(line.get_xdata(), table.loc[seen, "mean_predicted"])
    np.testing.assert_allclose(line.get_ydata(), table.loc[seen, "observed_rate"])
    assert "weighted for censoring" in top.get_title()
    assert not np.allclose(
        line.get_ydata(), metrics.reliability_table(y, p, 10)["observed_rate"][seen]
    )


def test_risk_bands_weight_the_mean_the_quantile_and_the_share() -> None:
    _, p, w = _weighted()
    bands = RiskBands.from_probabilities(p, weight=w)
    assert bands.moderate_from == pytest.approx(np.average(p, weights=w))
    # The high band holds 10% of the weight (inverted CDF), not 10% of the rows.
    assert np.average(p >= bands.high_from, weights=w) == pytest.approx(0.10, abs=0.002)
    assert bands.high_from != pytest.approx(RiskBands.from_probabilities(p).high_from)
    nb = RiskBands.from_probabilities(p, rule=HighBandRule.parse("net-benefit:0.3"), weight=w)
    assert nb.high_share == pytest.approx(np.average(p >= 0.3, weights=w))
    # Unweighted stays what it was.
    assert RiskBands.from_probabilities(p, weight=np.ones(p.size)).moderate_from == pytest.approx(
        RiskBands.from_probabilities(p).moderate_from
    )


def test_baselines_are_fitted_with_the_censoring_weights() -> None:
    cohort = simulate_cohort(600, seed=13)
    profile = get_profile(cohort.profile.name)
    registry = feature_registry(profile)
    x = build_features(cohort.sessions, cohort.clients, profile=profile, landmarks="training")
    ended = cohort.clients.set_index(CLIENT_ID)["outcome"]
    outcome = ended.reindex(x.index.get_level_values(CLIENT_ID)).to_numpy()
    keep = np.isin(outcome, ("completed", "dropout"))
    X = x.to_numpy(dtype=float)[keep]
    y = (outcome[keep] == "dropout").astype(float)
    w = np.where(y == 1, 3.0, 1.0)
    rule = fit_alert_rule(registry, X, y, sample_weight=w)
    flagged = alert_flags(rule_columns(registry), X) == 1
    assert rule.rate_flagged == pytest.approx(np.average(y[flagged], weights=w[flagged]))
    assert rule.rate_unflagged == pytest.approx(np.average(y[~flagged], weights=w[~flagged]))
    # Weighting events 3:1 is refitting on each dropout row three times.
    weighted = fit_logistic(registry, X, y, sample_weight=w)
    repeat = np.repeat(np.arange(y.size), w.astype(int))
    replicated = fit_logistic(registry, X[repeat], y[repeat])
    # (up to the imputer's medians, which the replicated rows move a little)
    near = np.abs(weighted.predict_proba(X) - replicated.predict_proba(X)).max()
    unweighted = np.abs(weighted.predict_proba(X) - fit_logistic(registry, X, y).predict_proba(X))
    assert near < 0.005 and unweighted.mean() > 0.05, (near, unweighted.mean())


# --------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def trained():
    """A small model trained on a date-censored extract (IPCW: test weights are not all 1)."""
    sim = SimulationConfig(enrolment_days=300)
    cohort = simulate_cohort(1200, seed=4, config=sim)
    config = TrainConfig(
        n_trials=1, n_boot=0, k_max=10,
        search=SearchSpace(max_depth=(3, 3), eta=(0.1, 0.1), max_rounds=60),
    )  # fmt: skip
    result = train_model(cohort.sessions, cohort.clients, cohort.profile, config)
    external = simulate_cohort(400, seed=9, config=sim)
    return result, external


def test_the_run_s_calibration_tables_are_weighted_as_its_metrics(trained, tmp_path, figures):
    result, _ = trained
    evaluation = result.evaluation
    w = evaluation.data.weight
    assert w is not None and not np.allclose(w, 1.0)
    support = decision_support(evaluation)
    y, p = evaluation.data.y, evaluation.probability
    bins = pd.qcut(p, 10, labels=False, duplicates="drop")
    for row in support.calibration.itertuples(index=False):
        mask = bins == row.bin - 1
        assert row.observed_rate == pytest.approx(np.average(y[mask], weights=w[mask]))
    # calibration.png and its table are the ECE's bins, weighted: the card's ECE.
    table = report_plots.write_evaluation_plots(evaluation, tmp_path)
    ece = np.nansum(table["weight"] * (table["observed_rate"] - table["mean_predicted"]).abs())
    assert ece / table["weight"].sum() == pytest.approx(evaluation.model.overall["ece"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "calibration.csv"), table)
    legend = _texts(figures["roc.png"])
    assert f"model (AUROC {evaluation.model.overall['auroc']:.3f})" in legend
    for name, base in evaluation.baselines.items():
        assert f"{name} (AUROC {base.overall['auroc']:.3f})" in legend
    report_plots.write_decision_support(support, evaluation.landmark_table(), tmp_path)
    caption = f"effective n {evaluation.model.overall['effective_n']:,.0f} of {y.size:,} rows"
    for name in ("calibration.png", "calibration_ci.png", "decision_curve.png", "roc.png"):
        assert caption in "\n".join(_texts(figures[name])), name
    assert "eff. n" in "\n".join(_texts(figures["calibration_by_gender.png"]))
    # landmarks.png's bottom panel marks each landmark's effective n on its rows.
    rows_panel = figures["landmarks.png"].axes[-1]
    assert "effective n (Kish, censoring weights)" in _texts(figures["landmarks.png"])
    single = evaluation.landmark_table()
    single = single.loc[single["landmark"].map(lambda v: not isinstance(v, str))]
    (marks,) = rows_panel.get_lines()
    np.testing.assert_allclose(marks.get_ydata(), single["effective_n"].to_numpy(float))
    assert (single["effective_n"] < single["n"]).any()


def test_an_evaluate_run_has_the_alert_rule_and_names_its_data(trained, tmp_path, figures):
    result, external = trained
    evaluation = evaluate_on(result.scorer, external.sessions, external.clients)
    evaluation = replace(evaluation, population=evaluated_population(Path("ext_sessions.csv")))
    support = decision_support(evaluation)
    assert ALERT_RULE in support.decision_curve.columns
    assert ALERT_RULE in set(support.workload["strategy"])
    report_plots.write_evaluation_plots(evaluation, tmp_path)
    report_plots.write_decision_support(support, evaluation.landmark_table(), tmp_path)
    assert {"calibration.png", "roc.png", "pr.png", "decision_curve.png"} <= set(figures)
    for name, fig in figures.items():
        titles = "\n".join(_texts(fig))
        assert "test set" not in titles and "test split" not in titles, name
        assert "the evaluation cohort (ext_sessions.csv)" in titles, name
    assert ALERT_RULE in _texts(figures["decision_curve.png"])
    # The run's own evaluation says it is on its test split.
    assert "test split" in result.evaluation.population
