"""Decision support: net benefit, alert workload, calibration intervals, and their plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.decision import (
    ALERT_RULE,
    CI_HIGH,
    CI_LOW,
    MODEL,
    SESSION_DAY,
    TREAT_ALL,
    TREAT_NONE,
    DecisionSupport,
    alert_workload,
    calibration_ci,
    decision_curve,
    net_benefit,
    rule_flags,
    subgroup_calibration,
    treat_all,
)
from training.report_plots import write_decision_support

# Ten rows, three dropouts; scores in descending order.
Y = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 0])
P = np.array([0.9, 0.6, 0.55, 0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05])


def test_net_benefit_matches_a_hand_computed_case() -> None:
    # pt = 0.5: rows 0-2 act, TP 2, FP 1: 2/10 - 1/10 * 1 = 0.1.
    # pt = 0.2: rows 0-4 act, TP 2, FP 3: 2/10 - 3/10 * 0.25 = 0.125.
    # pt = 0.1: rows 0-7 act (ties at 0.1 included), TP 3, FP 5: 3/10 - 5/10 / 9.
    nb = net_benefit(Y, P, [0.5, 0.2, 0.1])
    np.testing.assert_allclose(nb, [0.1, 0.125, 0.3 - 0.5 / 9])
    # Treat all at pt = 0.2: 0.3 - 0.7 * 0.25.
    np.testing.assert_allclose(treat_all(Y, [0.2]), [0.125])


def test_net_benefit_agrees_with_a_direct_loop() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=300).round(2)
    y = (rng.uniform(size=300) < p).astype(int)
    t = np.array([0.05, 0.2, 0.33, 0.5, 0.71])
    direct = [
        ((p >= pt) & (y == 1)).mean() - ((p >= pt) & (y == 0)).mean() * pt / (1 - pt) for pt in t
    ]
    np.testing.assert_allclose(net_benefit(y, p, t), direct)


def test_decision_curve_has_every_strategy_and_treat_none_is_zero() -> None:
    flag = (P > 0.5).astype(int)  # rows 0-2: TP 2, FP 1
    curve = decision_curve(Y, {MODEL: P}, {ALERT_RULE: flag}, thresholds=[0.2, 0.5])
    assert list(curve.columns) == ["threshold", MODEL, ALERT_RULE, TREAT_ALL, TREAT_NONE]
    np.testing.assert_allclose(curve[ALERT_RULE], [0.2 - 0.1 * 0.25, 0.2 - 0.1 * 1.0])
    assert (curve[TREAT_NONE] == 0).all()
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        net_benefit(Y, P, [0.0])


def test_net_benefit_interval_resamples_clients_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(5)
    clients = np.repeat(np.arange(300), 3)
    risk = np.repeat(rng.uniform(0.05, 0.6, 300), 3)
    y = np.repeat((rng.uniform(size=300) < risk[::3]).astype(int), 3)
    p = np.clip(risk + rng.normal(0, 0.05, 900), 0, 1)
    t = np.array([0.1, 0.2, 0.3])
    curve = decision_curve(y, {MODEL: p}, thresholds=t, cluster=clients, n_boot=300)
    low, high = curve[MODEL + CI_LOW].to_numpy(), curve[MODEL + CI_HIGH].to_numpy()
    assert (low < curve[MODEL].to_numpy()).all() and (curve[MODEL].to_numpy() < high).all()
    # Rows of one client move together: wider than resampling the 900 rows one by one.
    rows = decision_curve(y, {MODEL: p}, thresholds=t, cluster=np.arange(900), n_boot=300)
    assert ((high - low) > 1.3 * (rows[MODEL + CI_HIGH] - rows[MODEL + CI_LOW])).all()
    assert MODEL + CI_LOW not in decision_curve(y, {MODEL: p}, thresholds=t).columns


def _workload_frame() -> pd.DataFrame:
    # 1970-01-04 (day 3) is a Sunday and 1970-01-05 (day 4) a Monday: different weeks.
    return pd.DataFrame(
        {
            "client_id": ["c1", "c1", "c2", "c3", "c3"],
            "therapist_id": ["A", "A", "A", "B", "B"],
            SESSION_DAY: [3, 4, 3, 3, 17],
            "y": [1, 1, 0, 1, 1],
        }
    )


def test_workload_on_a_constructed_table() -> None:
    p = np.array([0.1, 0.6, 0.7, 0.2, 0.3])
    table = alert_workload(_workload_frame(), {MODEL: p}, thresholds=[0.5])
    row = table.iloc[0]
    # Alerts: c1's second session (A, week of day 4) and c2's (A, week of day 3).
    # Clinician-weeks: A/week0, A/week1, B/week0, B/week2 = 4.
    assert row["alerts"] == 2
    assert row["alerts_per_100_sessions"] == pytest.approx(40.0)
    assert row["alerts_per_clinician_week"] == pytest.approx(0.5)
    assert row["alerts_per_clinician_week_p90"] == pytest.approx(1.0)
    assert row["dropouts_caught"] == pytest.approx(0.5)  # c1 of c1, c3
    assert row["completers_alerted"] == pytest.approx(1.0)  # c2


def test_workload_rule_row_and_missing_therapist() -> None:
    frame = _workload_frame().assign(therapist_id=["A", "A", None, "B", "B"])
    flags = {ALERT_RULE: np.array([0, 0, 1, 0, 1])}
    table = alert_workload(frame, {MODEL: np.zeros(5)}, flags, thresholds=[0.5])
    rule = table[table["strategy"] == ALERT_RULE].iloc[0]
    assert np.isnan(rule["threshold"])
    # The unassigned alert counts in the totals, not per clinician: 1 alert / 4 weeks.
    assert rule["alerts"] == 2
    assert rule["alerts_per_clinician_week"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="session_day"):
        alert_workload(frame.drop(columns=SESSION_DAY), {MODEL: np.zeros(5)})


def test_calibration_ci_uses_quantile_bins_with_wilson_intervals() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.6, 2000)
    y = (rng.uniform(size=2000) < p).astype(int)
    table = calibration_ci(y, p, n_bins=10)
    assert len(table) == 10 and table["n"].sum() == 2000
    assert table["n"].between(195, 205).all()
    assert (table["ci_low"] <= table["observed_rate"]).all()
    assert (table["observed_rate"] <= table["ci_high"]).all()
    # Wilson for 0 of 10 is not the degenerate [0, 0].
    zero = calibration_ci(np.zeros(10), np.full(10, 0.2), n_bins=1).iloc[0]
    assert zero["ci_low"] == 0 and 0.2 < zero["ci_high"] < 0.35


def test_calibration_ci_counts_a_client_once_when_their_rows_share_the_outcome() -> None:
    # 100 clients x 4 rows with one outcome each: the rows carry the information of 100
    # clients, so the clustered interval is Wilson's on 100, wider than on 400 rows.
    rng = np.random.default_rng(4)
    outcome = (rng.uniform(size=100) < 0.3).astype(int)
    y, p = np.repeat(outcome, 4), np.full(400, 0.3)
    clients = np.repeat(np.arange(100), 4)
    clustered = calibration_ci(y, p, n_bins=1, cluster=clients).iloc[0]
    naive = calibration_ci(y, p, n_bins=1).iloc[0]
    by_client = calibration_ci(outcome, np.full(100, 0.3), n_bins=1).iloc[0]
    assert clustered["effective_n"] == 100 and naive["effective_n"] == 400
    assert clustered["ci_low"] == pytest.approx(by_client["ci_low"])
    assert clustered["ci_high"] == pytest.approx(by_client["ci_high"])
    assert clustered["ci_high"] - clustered["ci_low"] > 1.8 * (naive["ci_high"] - naive["ci_low"])
    # Independent rows (one per client) keep the plain Wilson interval.
    single = calibration_ci(outcome, np.full(100, 0.3), n_bins=1, cluster=np.arange(100))
    assert single.iloc[0]["effective_n"] == 100


def test_subgroup_calibration_leaves_small_groups_out() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0.05, 0.6, 600)
    y = (rng.uniform(size=600) < p).astype(int)
    frame = pd.DataFrame({"clinic_id": ["big"] * 500 + ["small"] * 100})
    table = subgroup_calibration(y, p, frame, by=("clinic_id",), min_n=200)
    assert set(table["group"]) == {"big"} and (table["group_n"] == 500).all()


def test_rule_flags_pick_the_alerting_arm() -> None:
    np.testing.assert_array_equal(rule_flags(np.array([0.1, 0.4, 0.1])), [0, 1, 0])
    np.testing.assert_array_equal(rule_flags(np.array([0.2, 0.2])), [0, 0])


def test_write_decision_support_writes_plots_and_tables(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 1200
    p = rng.beta(2, 6, n)
    y = (rng.uniform(size=n) < p).astype(int)
    context = pd.DataFrame(
        {
            "client_id": np.repeat(np.arange(n // 4), 4),
            "therapist_id": rng.choice(["t1", "t2", "t3"], n),
            SESSION_DAY: rng.integers(0, 120, n),
            "clinic_id": rng.choice(["north", "south"], n),
        }
    )
    flags = {ALERT_RULE: (p > 0.3).astype(int)}
    support = DecisionSupport(
        decision_curve=decision_curve(y, {MODEL: p}, flags),
        workload=alert_workload(context.assign(y=y), {MODEL: p}, flags),
        calibration=calibration_ci(y, p),
        subgroup_calibration=subgroup_calibration(y, p, context),
    )
    landmarks = pd.DataFrame(
        {
            "landmark": [1, 2, 3],
            "n": [400, 400, 400],
            "auroc": [0.7, 0.72, 0.75],
            "ece": [0.02, 0.03, 0.04],
            "mean_probability": [0.2, 0.21, 0.22],
            "prevalence": [0.22, 0.22, 0.23],
        }
    )
    tables = write_decision_support(support, landmarks, tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == [
        "alert_workload.png",
        "calibration_by_clinic_id.png",
        "calibration_ci.png",
        "decision_curve.png",
        "landmarks.png",
    ]
    assert all((tmp_path / f"{name}.csv").is_file() for name in tables)
    card = support.card_table(high_from=0.3312)
    assert card.loc[card["threshold"] == 0.33, "note"].item() == "high band (from 0.331)"
    assert {"net benefit, model", "alerts per clinician-week", "dropouts caught"} <= set(card)


def test_train_high_band_option_is_documented_and_checked(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    wide = {"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["train", "--help"], env=wide).output.split())
    assert "--high-band" in help_text and "net-benefit:PT" in help_text
    for name in ("sessions.csv", "clients.csv"):
        (tmp_path / name).write_text("client_id\n")
    bad = runner.invoke(
        app,
        ["train", "--sessions", str(tmp_path / "sessions.csv"), "--clients",
         str(tmp_path / "clients.csv"), "--high-band", "net-benefit:2"],
        env=wide,
    )  # fmt: skip
    assert bad.exit_code == 2
    assert "strictly between 0 and 1" in " ".join(bad.output.split())


def test_landmark_plot_reads_the_evaluation_table_as_computed(tmp_path: Path) -> None:
    from training.report_plots import plot_landmarks

    # Keyed "value" as the evaluation computes it; a band row, if any, is left out.
    table = pd.DataFrame(
        {
            "value": [1, 2, "1-2"],
            "n": [300, 250, 550],
            "auroc": [0.7, np.nan, 0.71],
            "ece": [0.02, 0.05, 0.03],
            "mean_probability": [0.2, 0.21, 0.2],
            "prevalence": [0.22, 0.2, 0.21],
        }
    )
    path = plot_landmarks(table, tmp_path)
    assert path.name == "landmarks.png" and path.stat().st_size > 5_000


def test_weighted_decision_curve_and_workload_equal_replicated_rows() -> None:
    """Censoring weights are multiplicities: the weighted net benefit (model, alert rule,
    treat all) and workload equal those of the rows repeated ``w`` times."""
    rng = np.random.default_rng(7)
    n_clients = 300
    client = np.repeat(np.arange(n_clients), 3)
    p = rng.uniform(0.02, 0.6, client.size)
    y = (rng.random(n_clients) < 0.3).astype(float)[client]
    w = rng.integers(1, 4, n_clients).astype(float)[client]
    flag = (p > 0.4).astype(int)
    rep = np.repeat(np.arange(client.size), w.astype(int))
    t = np.array([0.1, 0.2, 0.3])
    weighted = decision_curve(y, {"model": p}, {"rule": flag}, t, weight=w)
    repeated = decision_curve(y[rep], {"model": p[rep]}, {"rule": flag[rep]}, t)
    pd.testing.assert_frame_equal(weighted, repeated)
    frame = pd.DataFrame(
        {
            "client_id": client.astype(str),
            "therapist_id": (client % 5).astype(str),
            "session_day": 19000 + (client % 40) * 7,
            "y": y,
        }
    )
    wl = alert_workload(frame, {"model": p}, thresholds=t, weight=w)
    # Each client copied w times under new ids (its rows' sessions with it).
    copy = np.concatenate([np.arange(int(k)) for k in w])
    copies = frame.iloc[rep].assign(client_id=lambda f: f["client_id"] + "_" + copy.astype(str))
    rl = alert_workload(copies, {"model": p[rep]}, thresholds=t)
    for column in ("alerts_per_100_sessions", "alerts_per_clinician_week", "dropouts_caught"):
        np.testing.assert_allclose(wl[column], rl[column])


def test_landmark_plot_draws_the_ece_expected_under_perfect_calibration(tmp_path: Path) -> None:
    """On 150-400 rows a perfectly calibrated model's ECE is ~0.035, above the old fixed
    'target 0.03' line; the plot draws the simulated expectation per landmark instead."""
    from training.decision import expected_ece_by_landmark
    from training.metrics import ece
    from training.report_plots import plot_landmarks

    rng = np.random.default_rng(11)
    sizes = {1: 400, 5: 250, 9: 150}
    landmark = np.concatenate([np.full(n, k) for k, n in sizes.items()])
    p = 1 / (1 + np.exp(-rng.normal(-1.4, 0.8, landmark.size)))
    expected = expected_ece_by_landmark(landmark, p).set_index("landmark")
    assert list(expected.index) == [1, 5, 9]
    assert (expected["ece_expected"] > 0.02).all() and expected.loc[9, "ece_expected"] > 0.03
    assert (expected["ece_expected_p95"] > expected["ece_expected"]).all()
    # Outcomes that are calibrated by construction fall under the 95th percentile mostly.
    inside = 0
    for seed in range(20):
        y = (np.random.default_rng(seed).random(p.size) < p).astype(int)
        inside += ece(y[landmark == 5], p[landmark == 5]) <= expected.loc[5, "ece_expected_p95"]
    assert inside >= 17
    table = pd.DataFrame(
        {
            "landmark": [1, 5, 9],
            "n": list(sizes.values()),
            "auroc": [0.7, 0.72, 0.7],
            "ece": [0.03, 0.04, 0.06],
            "mean_probability": [0.2, 0.21, 0.2],
            "prevalence": [0.22, 0.2, 0.21],
            **expected.reset_index(drop=True).to_dict("list"),
        }
    )
    assert plot_landmarks(table, tmp_path).stat().st_size > 5_000
