"""Report artefacts: PNG plots, the reliability table, Markdown tables and the model card."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.metrics import reliability_table
from training.report import (
    INTENDED_USE,
    PLACEHOLDER,
    SUBGROUP_GATE_MAX_ECE,
    dataframe_to_markdown,
    model_card,
)
from training.report_plots import plot_calibration, plot_pr, plot_roc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores(n: int = 400, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 5, n)
    y = (rng.uniform(size=n) < p).astype(int)
    return y, p


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000


# --------------------------------------------------------------------------- plots


def test_plots_write_pngs_into_a_new_directory(tmp_path: Path) -> None:
    y, p = _scores()
    rule = (p > 0.4).astype(int)
    out = tmp_path / "artifacts" / "plots"
    curves = {"model": (y, p), "alert rule": (y, rule)}
    written = [plot_calibration(y, p, out), plot_roc(curves, out), plot_pr(curves, out)]
    assert [w.name for w in written] == ["calibration.png", "roc.png", "pr.png"]
    assert all(w.parent == out and _is_png(w) for w in written)


def test_plotting_leaves_pyplot_alone(tmp_path: Path) -> None:
    # pyplot holds the global backend and figure registry; the plots must not need it.
    pyplot_before = "matplotlib.pyplot" in sys.modules
    plot_roc({"m": ([0, 1, 0, 1], [0.1, 0.8, 0.3, 0.6])}, tmp_path)
    if not pyplot_before:
        assert "matplotlib.pyplot" not in sys.modules


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1, 1], [0.2, 0.5], "3 outcomes but 2 probabilities"),
        ([0, 2], [0.2, 0.5], "outcomes must be 0 or 1"),
        ([0, 1], [0.2, 1.5], "within \\[0, 1\\]"),
        ([0, 1], [0.2, np.nan], "finite"),
        ([], [], "no rows"),
    ],
)
def test_invalid_inputs_are_named(tmp_path: Path, y: list, p: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plot_calibration(y, p, tmp_path)
    with pytest.raises(ValueError, match=match):
        plot_roc({"model": (y, p)}, tmp_path)
    assert not list(tmp_path.iterdir())


def test_roc_and_pr_need_both_outcomes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="baseline: ROC and PR curves need both outcomes"):
        plot_pr({"baseline": ([1, 1], [0.2, 0.3])}, tmp_path)
    with pytest.raises(ValueError, match="at least one curve"):
        plot_roc({}, tmp_path)


# --------------------------------------------------------------------------- calibration table


def test_reliability_table_bins_and_rates() -> None:
    y = [0, 1, 1, 0, 1]
    p = [0.05, 0.05, 0.95, 1.0, 0.55]
    table = reliability_table(y, p)
    assert len(table) == 10
    assert table["n"].tolist() == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert table.loc[0, "observed_rate"] == pytest.approx(0.5)
    assert table.loc[9, "mean_predicted"] == pytest.approx(0.975)
    assert np.isnan(table.loc[1, "observed_rate"])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1, allow_nan=False)), min_size=1),
    st.integers(1, 20),
)
def test_reliability_table_counts_every_row_once(
    rows: list[tuple[int, float]], n_bins: int
) -> None:
    y, p = zip(*rows, strict=True)
    table = reliability_table(y, p, n_bins)
    assert table["n"].sum() == len(rows)
    seen = table.loc[table["n"] > 0]
    assert (seen["mean_predicted"] >= seen["bin_low"] - 1e-12).all()
    assert (seen["mean_predicted"] <= seen["bin_high"] + 1e-12).all()
    assert seen["observed_rate"].between(0, 1).all()


# --------------------------------------------------------------------------- markdown


def test_dataframe_to_markdown_exact() -> None:
    df = pd.DataFrame({"name": ["a|b", "c\nd"], "n": [3, 120], "x": [0.12345, np.nan]})
    assert dataframe_to_markdown(df) == (
        "| name |   n |     x |\n"
        "| ---- | --: | ----: |\n"
        "| a\\|b |   3 | 0.123 |\n"
        "| c d  | 120 |       |"
    )


def test_dataframe_to_markdown_index_and_format() -> None:
    df = pd.DataFrame({"auroc": [0.8]}, index=pd.Index(["model"], name="model"))
    text = dataframe_to_markdown(df, index=True, float_format="{:.2f}")
    assert text.splitlines()[0] == "| model | auroc |"
    assert text.splitlines()[2] == "| model |  0.80 |"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=8), min_size=1, max_size=6))
def test_dataframe_to_markdown_keeps_one_line_per_row_and_column_count(cells: list[str]) -> None:
    df = pd.DataFrame({"a": cells, "b": range(len(cells))})
    lines = dataframe_to_markdown(df).splitlines()
    assert len(lines) == len(cells) + 2
    for line in lines:
        unescaped_pipes = line.count("|") - line.count("\\|")
        assert unescaped_pipes == 3


# --------------------------------------------------------------------------- model card


METRICS = pd.DataFrame(
    {
        "metric": ["auroc", "brier", "ece"],
        "value": [0.81, 0.12, 0.021],
        "ci_low": [0.79, 0.11, np.nan],
        "ci_high": [0.83, 0.13, np.nan],
    }
)
SUBGROUPS = pd.DataFrame(
    {
        "subgroup": ["gender", "gender"],
        "value": ["female", "male"],
        "n": [800, 150],
        "ece": [0.02, 0.09],
    }
)


def _card(**overrides: object) -> str:
    args: dict[str, object] = {
        "model_name": "alliance-risk",
        "data": {"clients": 2000, "fingerprint": "ab" * 32, "profile": "alliance6"},
        "model": {"estimator": "XGBoost", "calibration": "sigmoid on the margin"},
        "metrics": METRICS,
        "subgroups": SUBGROUPS,
        "baselines": pd.DataFrame({"model": ["model", "rule"], "auroc": [0.81, 0.62]}),
    }
    args.update(overrides)
    return model_card(**args)  # type: ignore[arg-type]


def test_model_card_sections_in_reading_order() -> None:
    card = _card()
    headings = [line for line in card.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Details",
        "## Intended use",
        "## Population and data",
        "## Model and calibration",
        "## Test metrics",
        "## By landmark",
        "## By subgroup",
        "## Baselines, on the same test rows",
        "## Risk bands",
        "## Decision support: net benefit and alert workload",
        "## Limitations",
    ]
    assert INTENDED_USE in card
    assert "must **never** be used to discharge a client, to ration or deny care" in card
    assert card.endswith("\n")


def test_model_card_says_what_if_scenarios_are_associations_not_causes() -> None:
    limitations = _card().split("## Limitations")[1]
    assert "what-if scenarios" in limitations
    assert "an association learned from past clients, not a promise" in limitations


def test_model_card_metrics_with_confidence_intervals() -> None:
    card = _card()
    assert "| auroc  | 0.810 | 0.790 to 0.830 |" in card
    assert "| ece    | 0.021 |                |" in card


def test_model_card_flags_small_subgroups() -> None:
    lines = _card().splitlines()
    male = next(line for line in lines if "| male " in line)
    female = next(line for line in lines if "| female " in line)
    assert "too small to judge (n < 200)" in male
    assert "too small" not in female


def test_model_card_simulated_warning_only_when_simulated() -> None:
    simulated = _card(simulated=True)
    real = _card(simulated=False)
    assert "Warning: trained and evaluated on simulated data" in simulated
    assert "- **Simulated data.**" in simulated
    assert "simulated data" not in real.lower().replace("data origin:** clinic records", "")
    assert "- **Data origin:** clinic records" in real


def test_model_card_fills_placeholders_from_arguments() -> None:
    blank = _card()
    assert "# Model card: alliance-risk (version _(to be filled in)_)" in blank
    assert blank.count(PLACEHOLDER) >= 5
    filled = _card(
        model_version="7",
        run_id="r123",
        git_commit="c" * 40,
        created_at="2026-01-02T03:04:05+00:00",
        contact="clinical-informatics@example.org",
        model={"estimator": "XGBoost", "calibration": "isotonic", "features": 41,
               "params": {"max_depth": 4, "eta": 0.1}},
    )  # fmt: skip
    assert "# Model card: alliance-risk (version 7)" in filled
    for text in ("r123", "c" * 40, "2026-01-02T03:04:05+00:00", "clinical-informatics@"):
        assert text in filled
    assert "`eta=0.1`, `max_depth=4`" in filled
    assert PLACEHOLDER not in filled


def test_model_card_data_and_optional_tables() -> None:
    card = _card(
        data={"clients": 2000, "splits": {"train": 1200, "test": 400}, "fingerprint": "f" * 64},
        landmarks=pd.DataFrame({"landmark": [1, 2], "n": [2000, 1800], "auroc": [0.7, 0.75]}),
        importance=pd.DataFrame({"group": ["attendance"], "mean_abs_contribution": [0.4]}),
    )
    assert "- **Split sizes (clients):** train: 1,200, test: 400" in card
    assert f"`{'f' * 64}`" in card
    assert "|        2 | 1800 | 0.750 |" in card
    # The evaluation's per-landmark table keys its rows "value": the card names the column.
    named = _card(landmarks=pd.DataFrame({"value": [1, 2], "n": [2000, 1800]}))
    section = named.split("## By landmark")[1].split("## By subgroup")[0]
    assert "| landmark |    n |" in section and "value" not in section
    assert "## Global importance by explanation group" in card
    assert "_No per-landmark results available for this run._" in _card()


def test_model_card_rejects_a_metrics_table_without_values() -> None:
    with pytest.raises(ValueError, match="metrics table lacks column\\(s\\): value"):
        _card(metrics=pd.DataFrame({"metric": ["auroc"]}))


def test_model_card_prints_no_raw_python_dict_or_list() -> None:
    card = _card(
        data={
            "clients": 2000,
            "dropout_rate": 0.273,
            "splits": {"train": 1200, "test": 400},
            "landmark_rows": {"train": 9000, "test": 3000},
            "extract_notes": {"method": "nightly", "weights": [0.5, 2.0]},
        },
        model={"estimator": "XGBoost", "params": {"max_depth": 4}},
        bands={"moderate_from": 0.2, "high_from": 0.4, "high_share": 0.1, "rule": "alert_rate"},
    )
    assert not re.search(r"\{'|\['|'\}|\]\s*$", card, flags=re.MULTILINE)
    assert "- **Landmark rows (scored sessions) per split:** train: 9,000, test: 3,000" in card
    assert "- **Extract notes:** method: nightly, weights: 0.500, 2.000" in card
    # Both dropout rates say their unit (the PR plot's is per landmark row).
    assert "Dropout rate (per episode: dropouts / ended episodes):** 0.273" in card


def test_pr_plot_says_its_dropout_rate_is_per_landmark_row(tmp_path: Path) -> None:
    from matplotlib.image import imread  # noqa: F401  (the plot must render)

    y, p = _scores()
    captured: list[str] = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.axhline

    def spy(self, y=0, *args, **kwargs):  # type: ignore[no-untyped-def]
        captured.append(str(kwargs.get("label", "")))
        return original(self, y, *args, **kwargs)

    matplotlib.axes.Axes.axhline = spy  # type: ignore[method-assign]
    try:
        plot_pr({"model": (y, p)}, tmp_path)
    finally:
        matplotlib.axes.Axes.axhline = original  # type: ignore[method-assign]
    assert any(label.startswith("dropout rate per landmark row") for label in captured)


def test_model_card_notes_the_subgroup_that_fails_the_gate() -> None:
    subgroups = pd.DataFrame(
        {
            "subgroup": ["clinic_id", "clinic_id", "gender"],
            "value": ["north", "south", "male"],
            "n": [900, 700, 150],
            "ece": [0.04, 0.14, 0.30],
        }
    )
    lines = _card(subgroups=subgroups).splitlines()
    south = next(line for line in lines if "| south " in line)
    north = next(line for line in lines if "| north " in line)
    male = next(line for line in lines if "| male " in line)
    assert "fails the subgroup ECE gate**: ECE 0.140 > 0.10" in south
    assert "fails" not in north
    assert "too small to judge" in male and "fails" not in male
    assert "| subgroup  | group" in "\n".join(lines)


def test_card_gate_defaults_match_the_promotion_gate() -> None:
    from training.registry import evaluate_gates

    defaults = inspect.signature(evaluate_gates).parameters
    assert defaults["max_subgroup_ece"].default == SUBGROUP_GATE_MAX_ECE
    assert (
        defaults["subgroup_min_n"].default
        == inspect.signature(model_card).parameters["subgroup_min_n"].default
    )


def test_model_card_shows_the_band_rule_and_decision_table() -> None:
    decision = pd.DataFrame(
        {
            "threshold": [0.2, 0.25],
            "net benefit, model": [0.05, 0.04],
            "alerts per clinician-week": [1.5, 1.1],
            "dropouts caught": [0.7, 0.6],
            "note": ["", "high band (from 0.250)"],
        }
    )
    card = _card(
        bands={
            "moderate_from": 0.18,
            "high_from": 0.25,
            "high_share": 0.14,
            "rule": "net_benefit",
            "threshold_probability": 0.25,
        },
        decision=decision,
    )
    bands = card.split("## Risk bands")[1].split("## Decision support")[0]
    assert "net benefit at threshold probability 0.25 (`--high-band net-benefit:0.25`)" in bands
    assert "3.0 unneeded check-ins" in bands
    assert "| high     |            0.250 |             1.000 |" in bands
    section = card.split("## Decision support: net benefit and alert workload")[1]
    assert "|     0.250 |" in section and "high band (from 0.250)" in section
    assert "report/decision_curve.png" in section and "report/alert_workload.png" in section
    old = _card(bands={"moderate_from": 0.2, "high_from": 0.4, "high_share": 0.1})
    assert "target alert rate 10.0% (`--high-band alert-rate:0.1`)" in old


def test_card_text_follows_the_censoring_method_and_where_bands_were_set() -> None:
    """The card's Limitations and dropout definition say what the run did with ongoing
    clients (IPCW: weighted, not left out), and the bands name the rows they were set on."""
    from training.censoring import exclusion_summary

    clients = pd.DataFrame({"outcome": ["completed", "dropout", "ongoing", "ongoing"]})
    bands = {"moderate_from": 0.2, "high_from": 0.5, "high_share": 0.1, "rule": "alert_rate"}
    ipcw = {
        "method": "ipcw", "clients": 4, "censored": 2, "censored_share": 0.5, "labelled": 2,
        "weight_min": 1.0, "weight_median": 1.5, "weight_max": 2.0, "capped": 0,
        "max_weight": 20.0, "closure_days": 28, "extraction_date": "2024-01-31",
        "assumption": "A",
    }  # fmt: skip
    held_out = "the held-out landmark rows of every development client"
    weighted = model_card(
        model_name="m",
        data={"censoring": ipcw},
        model={"held_out_rows": held_out},
        metrics=pd.DataFrame({"metric": ["auroc"], "value": [0.8]}),
        bands=bands,
    )
    assert "left out of training and evaluation" not in weighted
    assert "inverse probability of censoring" in weighted.split("## Limitations")[1]
    assert f"highest-risk 10.0% of {held_out} are *high*" in weighted
    assert "calibration split" not in weighted
    excluded = model_card(
        model_name="m",
        data={"censoring": exclusion_summary(clients)},
        model={},
        metrics=pd.DataFrame({"metric": ["auroc"], "value": [0.8]}),
    )
    assert "left out of training and evaluation unweighted" in excluded.split("## Limitations")[1]
