"""The PNG plots of a training or evaluation run.

- calibration (reliability on the ECE's bins), ROC and precision-recall of the model and its
  baselines;
- decision support (on held-out clients: the test split of a training run, the whole cohort
  of an evaluation run; titles name which, and captions the censoring weights' effective n): the decision curve, the alert workload, calibration curves with 95%
  intervals (overall and per subgroup), and discrimination and calibration per landmark
  (:func:`write_decision_support` writes these with their tables).

Everything takes plain data (arrays, DataFrames) and writes files into a directory that
:mod:`training.runlog` logs under ``report/``; nothing talks to MLflow. Every plot draws on
matplotlib's Agg canvas chosen inside the function, so importing this module neither imports
matplotlib nor touches pyplot's global backend.

The module is one job at about 650 lines and stays whole: drawing the run's figures, one
function per plot, sharing the figure style, captions and file naming.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from training import metrics
from training.decision import (
    ALERT_RULE,
    CI_HIGH,
    CI_LOW,
    HELD_OUT,
    MODEL,
    TREAT_ALL,
    TREAT_NONE,
    DecisionSupport,
    weighting_caption,
)
from training.metrics import kish_effective_n, reliability_table

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from training.evaluation import ModelEvaluation

Curves = Mapping[str, tuple[Any, Any]]
#: Files :func:`write_decision_support` writes, in the order the model card lists them.
DECISION_CURVE_PNG = "decision_curve.png"
WORKLOAD_PNG = "alert_workload.png"
CALIBRATION_CI_PNG = "calibration_ci.png"
LANDMARKS_PNG = "landmarks.png"
#: Per-subgroup calibration panels, one PNG per subgroup column.
SUBGROUP_CALIBRATION_PNG = "calibration_by_{subgroup}.png"
#: Readable names of the subgroup columns, for titles.
SUBGROUP_NAMES = {
    "clinic_id": "clinic",
    "age_band": "age band",
    "gender": "gender",
    "referral_source": "referral source",
}
#: Largest number of panels in a subgroup figure (the largest groups are drawn).
MAX_PANELS = 9

_STYLE = {
    MODEL: {"color": "tab:blue", "linewidth": 2.0},
    ALERT_RULE: {"color": "tab:orange", "linewidth": 1.5},
    TREAT_ALL: {"color": "grey", "linewidth": 1.0, "linestyle": "--"},
    TREAT_NONE: {"color": "black", "linewidth": 1.0, "linestyle": ":"},
}


def _figure(nrows: int = 1, ncols: int = 1, *, width: float = 7.0, height: float = 5.0) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.subplots(nrows, ncols, squeeze=False)
    return fig


def _save(fig: Figure, out_dir: Path | str, filename: str) -> Path:
    """Write ``fig`` as a PNG whose ``Title`` text chunk is the figure's title (what it shows
    and on which data, for file browsers and tests alike)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    title = fig.get_suptitle() or (fig.axes[0].get_title() if fig.axes else "")
    fig.savefig(path, format="png", metadata={"Title": title.replace("\n", "; ")})
    return path


# --------------------------------------------------------------------------- ROC, PR, reliability


def _binary_and_probs(y: Any, p: Any, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one (outcome, probability) pair: same length, y in {0, 1}, p in [0, 1]."""
    y_arr = np.asarray(y, dtype=float).ravel()
    p_arr = np.asarray(p, dtype=float).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"{label}: {y_arr.size} outcomes but {p_arr.size} probabilities")
    if y_arr.size == 0:
        raise ValueError(f"{label}: no rows")
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise ValueError(f"{label}: outcomes must be 0 or 1")
    if not (np.isfinite(p_arr).all() and (p_arr >= 0).all() and (p_arr <= 1).all()):
        raise ValueError(f"{label}: probabilities must be finite and within [0, 1]")
    return y_arr.astype(int), p_arr


def _both_classes(y: np.ndarray, label: str) -> None:
    if np.unique(y).size < 2:
        raise ValueError(f"{label}: ROC and PR curves need both outcomes present")


def _new_figure(nrows: int = 1, height_ratios: Sequence[int] | None = None) -> Figure:
    """A figure on the Agg canvas, independent of pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 6.0 if nrows > 1 else 5.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    if nrows > 1:
        fig.subplots(nrows, 1, sharex=True, gridspec_kw={"height_ratios": height_ratios})
    else:
        fig.subplots()
    return fig


def _caption(n_rows: int, weight: Any) -> str:
    """``"1,204 landmark rows"``, and with censoring weights their Kish effective n."""
    if weight is None:
        return f"{n_rows:,} landmark rows"
    return weighting_caption(kish_effective_n(weight), n_rows)


def _weight(weight: Any, n: int) -> np.ndarray | None:
    """Row weights as floats (None stays None), one per row, finite and >= 0."""
    if weight is None:
        return None
    w = np.asarray(weight, dtype=float).ravel()
    if w.shape != (n,) or not (np.isfinite(w) & (w >= 0)).all():
        raise ValueError("weights must be finite, >= 0 and one per row")
    return w


def plot_calibration(
    y: Any,
    p: Any,
    out_dir: Path | str,
    *,
    weight: Any = None,
    n_bins: int = 10,
    filename: str = "calibration.png",
    population: str = HELD_OUT,
    title: str | None = None,
) -> Path:
    """Reliability curve (``n_bins`` equal-width bins) above a histogram of rows per bin.

    The points are :func:`training.metrics.reliability_table` of the same rows and weights as
    the ECE the report quotes, so plot and number agree; with censoring weights the caption
    gives their effective n.

    Parameters
    ----------
    y : array-like of {0, 1}
        Observed dropout.
    p : array-like of float in [0, 1]
        Calibrated predicted probability of dropout.
    out_dir : path
        Directory to write into (created if missing).
    weight : array-like of float, optional
        Row weights (the evaluation's inverse-probability-of-censoring weights).
    population : str
        What the rows are (title: "Calibration on <population>"), unless ``title`` is given.

    Returns
    -------
    Path
        The PNG written, ``out_dir / filename``.
    """
    y_arr, p_arr = _binary_and_probs(y, p, "calibration")
    w = _weight(weight, y_arr.size)
    table = reliability_table(y_arr, p_arr, n_bins, w=w)
    fig = _new_figure(2, height_ratios=(3, 1))
    top, bottom = fig.axes
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    seen = table["n"] > 0
    top.plot(
        table.loc[seen, "mean_predicted"],
        table.loc[seen, "observed_rate"],
        marker="o",
        label="model" + (" (weighted for censoring)" if w is not None else ""),
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed dropout rate")
    top.set_title(
        title
        or _titled(
            "Calibration", population, f"{n_bins} equal-width bins (as the ECE)",
            _caption(y_arr.size, w),
        ),
        fontsize="medium",
    )  # fmt: skip
    top.legend(loc="upper left")
    centres = (table["bin_low"] + table["bin_high"]) / 2
    bottom.bar(centres, table["n"], width=1.0 / n_bins * 0.9, color="tab:blue")
    bottom.set_xlabel("predicted probability of dropout")
    bottom.set_ylabel("landmark rows")
    return _save(fig, out_dir, filename)


def plot_roc(
    curves: Curves,
    out_dir: Path | str,
    *,
    weight: Any = None,
    filename: str = "roc.png",
    population: str = HELD_OUT,
    title: str | None = None,
) -> Path:
    """ROC curves of the model and its baselines on one plot, AUROC in the legend.

    The legend's AUROC is :func:`training.metrics.auroc` with ``weight``: the number the model
    card and MLflow show.

    Parameters
    ----------
    curves : Mapping[str, (y, p)]
        Name (e.g. ``"model"``, ``"logistic baseline"``, ``"alert rule"``) to observed dropout
        (0/1) and score in [0, 1], all on the same rows; a 0/1 rule gives a single operating
        point.
    weight : array-like of float, optional
        Row weights of those rows (censoring): curves and AUROCs are weighted.
    """
    from sklearn.metrics import roc_curve

    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    fig = _new_figure()
    ax = fig.axes[0]
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    n_rows = 0
    w = None
    for name, (y, p) in curves.items():
        y_arr, p_arr = _binary_and_probs(y, p, name)
        _both_classes(y_arr, name)
        w = _weight(weight, y_arr.size)
        n_rows = y_arr.size
        fpr, tpr, _ = roc_curve(y_arr, p_arr, sample_weight=w)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {metrics.auroc(y_arr, p_arr, w):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or _titled("ROC", population, _caption(n_rows, w)), fontsize="medium")
    ax.legend(loc="lower right")
    return _save(fig, out_dir, filename)


def plot_pr(
    curves: Curves,
    out_dir: Path | str,
    *,
    weight: Any = None,
    filename: str = "pr.png",
    population: str = HELD_OUT,
    title: str | None = None,
) -> Path:
    """Precision-recall curves of the model and its baselines, AUPRC in the legend.

    The legend's AUPRC is :func:`training.metrics.auprc` with ``weight`` (the card's and
    MLflow's number). The horizontal line is the dropout rate of the first curve's rows (per
    landmark row, not per episode; weighted with ``weight``): what flagging at random achieves.
    """
    from sklearn.metrics import precision_recall_curve

    if not curves:
        raise ValueError("plot_pr needs at least one curve")
    fig = _new_figure()
    ax = fig.axes[0]
    prevalences = []
    n_rows = 0
    w = None
    for name, (y, p) in curves.items():
        y_arr, p_arr = _binary_and_probs(y, p, name)
        _both_classes(y_arr, name)
        w = _weight(weight, y_arr.size)
        n_rows = y_arr.size
        prevalences.append(float(np.average(y_arr, weights=w)))
        precision, recall, _ = precision_recall_curve(y_arr, p_arr, sample_weight=w)
        auprc = metrics.auprc(y_arr, p_arr, w)
        ax.step(recall, precision, where="post", label=f"{name} (AUPRC {auprc:.3f})")
    prevalence = prevalences[0]
    # Per landmark row, as the curves are: lower than the card's per-episode dropout rate,
    # because clients who stay are scored at more sessions than those who leave.
    ax.axhline(
        prevalence,
        linestyle="--",
        color="grey",
        label=f"dropout rate per landmark row {prevalence:.3f}",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_title(
        title or _titled("Precision-recall", population, _caption(n_rows, w)), fontsize="medium"
    )
    ax.legend(loc="upper right")
    return _save(fig, out_dir, filename)


def write_evaluation_plots(evaluation: ModelEvaluation, out_dir: Path | str) -> pd.DataFrame:
    """``calibration.png`` (with its table, ``calibration.csv``), ``roc.png`` and ``pr.png``
    of one evaluation: the model and its baselines on the evaluation's rows, weighted by its
    censoring weights as its metrics are, titled with what it evaluated
    (:attr:`~training.evaluation.ModelEvaluation.population`).

    Returns
    -------
    pandas.DataFrame
        The calibration table (:func:`training.metrics.reliability_table` of the evaluation's
        rows and weights), the points ``calibration.png`` draws.
    """
    out = Path(out_dir)
    y, w, population = evaluation.data.y, evaluation.data.weight, evaluation.population
    table = reliability_table(y, evaluation.probability, 10, w=w)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "calibration.csv", index=False)
    plot_calibration(y, evaluation.probability, out, weight=w, population=population)
    curves = {"model": (y, evaluation.probability)}
    curves.update({k: (y, p) for k, p in evaluation.baseline_probability.items()})
    if np.unique(y).size == 2:
        plot_roc(curves, out, weight=w, population=population)
        plot_pr(curves, out, weight=w, population=population)
    return table


# --------------------------------------------------------------------------- decision support


def _titled(what: str, population: str, *lines: str) -> str:
    """``"<what> on <population>"``, then each non-empty line of ``lines`` on its own."""
    return "\n".join([f"{what} on {population}", *(line for line in lines if line)])


def plot_decision_curve(
    curve: pd.DataFrame, out_dir: Path | str, *, population: str = HELD_OUT, caption: str = ""
) -> Path:
    """Net benefit against threshold probability, one line per strategy.

    ``curve`` is :func:`training.decision.decision_curve`'s table. The y axis runs from a
    little below 0 to a little above the dropout rate (treat all's value near 0), so the
    strategies stay readable where treating everyone turns sharply negative.
    """
    fig = _figure()
    ax = fig.axes[0]
    t = curve["threshold"].to_numpy()
    strategies = [
        c for c in curve.columns if c != "threshold" and not c.endswith((CI_LOW, CI_HIGH))
    ]
    for name in strategies:
        ax.plot(t, curve[name], label=name, **_STYLE.get(name, {"linewidth": 1.5}))
        if name + CI_LOW in curve.columns:
            ax.fill_between(
                t,
                curve[name + CI_LOW],
                curve[name + CI_HIGH],
                color=_STYLE.get(name, {}).get("color", "tab:blue"),
                alpha=0.2,
                linewidth=0,
                label=f"{name}: 95% interval (clients resampled)",
            )
    top = float(np.nanmax(curve[strategies].to_numpy())) if strategies else 0.1
    ax.set_ylim(-0.25 * max(top, 0.01), 1.15 * max(top, 0.01))
    ax.set_xlim(0, float(t.max()))
    ax.set_xlabel(
        "threshold probability pt: act when predicted risk >= pt\n"
        "(pt = 0.25: one missed dropout weighs as much as 3 unneeded check-ins)"
    )
    ax.set_ylabel("net benefit (dropouts alerted per session, net of false alerts)")
    ax.grid(alpha=0.3)
    ax.set_title(
        _titled("Decision curve", population, "unit: one scored session", caption),
        fontsize="medium",
    )
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(loc="upper right")
    return _save(fig, out_dir, DECISION_CURVE_PNG)


def plot_workload(
    workload: pd.DataFrame, out_dir: Path | str, *, population: str = HELD_OUT, caption: str = ""
) -> Path:
    """Alerts per clinician-week (top) and the share of dropouts caught (bottom) by threshold.

    The model's rows vary with the threshold; the alert rule (a fixed 0/1 alert) is a
    horizontal reference line in both panels.
    """
    fig = _figure(2, 1, height=6.5)
    top, bottom = fig.axes
    model = workload[workload["strategy"] == MODEL]
    rule = workload[workload["strategy"] == ALERT_RULE]
    t = model["threshold"].to_numpy()
    top.plot(t, model["alerts_per_clinician_week"], label="model: mean", **_STYLE[MODEL])
    top.plot(
        t,
        model["alerts_per_clinician_week_p90"],
        label="model: 90th percentile of clinician-weeks",
        color="tab:blue",
        linestyle="--",
    )
    bottom.plot(t, model["dropouts_caught"], label="dropouts caught (clients)", **_STYLE[MODEL])
    bottom.plot(
        t,
        model["completers_alerted"],
        label="completers alerted (clients)",
        color="tab:red",
        linestyle="--",
    )
    if not rule.empty:
        r = rule.iloc[0]
        top.axhline(r["alerts_per_clinician_week"], label="alert rule: mean", **_STYLE[ALERT_RULE])
        bottom.axhline(
            r["dropouts_caught"], label="alert rule: dropouts caught", **_STYLE[ALERT_RULE]
        )
        bottom.axhline(
            r["completers_alerted"],
            label="alert rule: completers alerted",
            color="tab:orange",
            linestyle=":",
        )
    top.set_ylabel("alerts per clinician per week")
    top.set_title(
        _titled("Alert workload", population, "their sessions only", caption), fontsize="medium"
    )
    top.legend(loc="upper right", fontsize="small")
    bottom.set_ylabel("share of clients alerted at any session")
    bottom.set_ylim(0, 1.02)
    bottom.set_xlabel("threshold probability (alert when predicted risk is at or above it)")
    bottom.legend(loc="lower left", fontsize="small")
    for ax in (top, bottom):
        ax.set_xlim(0, float(t.max()) if t.size else 1.0)
        ax.grid(alpha=0.3)
    return _save(fig, out_dir, WORKLOAD_PNG)


def _calibration_axes(ax: Axes, table: pd.DataFrame, *, limit: float, label: str) -> None:
    """Diagonal, points with Wilson interval bars, equal axes from 0 to ``limit``."""
    ax.plot([0, limit], [0, limit], linestyle="--", color="grey", linewidth=1)
    if not table.empty:
        x = table["mean_predicted"].to_numpy(dtype=float)
        y = table["observed_rate"].to_numpy(dtype=float)
        err = np.vstack(
            [y - table["ci_low"].to_numpy(dtype=float), table["ci_high"].to_numpy(dtype=float) - y]
        )
        ax.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=3, label=label)
    ax.set_xlim(0, limit)
    ax.set_ylim(0, limit)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)


def _limit(*tables: pd.DataFrame) -> float:
    """A shared axis limit: the largest interval bound or mean prediction, rounded up."""
    high = [0.1]
    for t in tables:
        if not t.empty:
            high += [float(t["ci_high"].max()), float(t["mean_predicted"].max())]
    return min(1.0, math.ceil(max(high) * 10 + 0.5) / 10)


def plot_calibration_ci(
    table: pd.DataFrame, out_dir: Path | str, *, population: str = HELD_OUT, caption: str = ""
) -> Path:
    """The model's calibration on quantile bins with 95% Wilson intervals (overall).

    ``table``: :func:`training.decision.calibration_ci` (weighted when the evaluation is);
    ``caption`` says how (:meth:`training.decision.DecisionSupport.weighting`)."""
    fig = _figure(width=6.0, height=6.0)
    ax = fig.axes[0]
    _calibration_axes(
        ax, table, limit=_limit(table), label="model (95% Wilson interval, clients as clusters)"
    )
    ax.plot([], [], linestyle="--", color="grey", label="perfect calibration")
    n = int(table["n"].sum()) if not table.empty else 0
    ax.set_title(
        _titled(
            "Calibration", population, f"{len(table)} quantile bins of {n:,} landmark rows", caption
        ),  # fmt: skip
        fontsize="medium",
    )
    ax.set_xlabel("mean predicted probability of dropout in the bin")
    ax.set_ylabel("observed dropout rate in the bin")
    ax.legend(loc="upper left")
    return _save(fig, out_dir, CALIBRATION_CI_PNG)


def plot_subgroup_calibration(
    table: pd.DataFrame,
    subgroup: str,
    out_dir: Path | str,
    *,
    population: str = HELD_OUT,
    weighted: bool = False,
) -> Path:
    """One calibration panel per group of ``subgroup`` (largest :data:`MAX_PANELS` groups).

    ``weighted``: the table is weighted for censoring; each panel then gives its group's
    effective n (``group_effective_n``, Kish) beside its rows."""
    rows = table[table["subgroup"] == subgroup]
    sizes = rows.groupby("group")["group_n"].first().sort_values(ascending=False)
    # The largest groups, in reading order ("<25" before "25-39").
    groups = sorted(sizes.index[:MAX_PANELS], key=lambda g: (not str(g).startswith("<"), str(g)))
    ncols = 2 if len(groups) <= 4 else 3
    nrows = max(1, math.ceil(len(groups) / ncols))
    fig = _figure(nrows, ncols, width=3.3 * ncols + 0.6, height=3.3 * nrows + 0.8)
    limit = _limit(rows)
    for ax, group in zip(fig.axes, groups, strict=False):
        part = rows[rows["group"] == group]
        _calibration_axes(ax, part, limit=limit, label=str(group))
        size = f"{int(sizes[group]):,} rows"
        if weighted and "group_effective_n" in part.columns:
            size += f", eff. n {float(part['group_effective_n'].iloc[0]):,.0f}"
        ax.set_title(f"{group} ({size})", fontsize="medium")
    for ax in fig.axes[len(groups) :]:
        ax.set_visible(False)
    left_out = len(sizes) - len(groups)
    note = f"; {left_out} smaller group(s) not drawn" if left_out else ""
    name = SUBGROUP_NAMES.get(subgroup, subgroup)
    weighting = "weighted for censoring (eff. n: Kish effective sample size)" if weighted else ""
    fig.suptitle(
        _titled(
            f"Calibration by {name}",
            population,
            f"landmark rows in 5 quantile bins, 95% Wilson intervals (clients as clusters){note}",
            weighting,
        ),
        fontsize="medium",
    )
    fig.supxlabel("mean predicted probability of dropout")
    fig.supylabel("observed dropout rate")
    return _save(fig, out_dir, SUBGROUP_CALIBRATION_PNG.format(subgroup=subgroup))


def landmark_column(table: pd.DataFrame) -> str:
    """The landmark column of a per-landmark table (``landmark``, or ``value`` as computed)."""
    return "landmark" if "landmark" in table.columns else "value"


def plot_landmarks(
    table: pd.DataFrame,
    out_dir: Path | str,
    *,
    population: str = HELD_OUT,
    caption: str = "",
    weighted: bool = False,
) -> Path:
    """AUROC, ECE, mean predicted against observed dropout rate, and rows, per landmark.

    ``table`` is the evaluation's per-landmark table: a landmark column (``landmark`` or
    ``value``), ``n``, ``auroc``, ``ece``, ``mean_probability`` and ``prevalence``. Late
    landmarks hold few rows; the bottom panel shows how few, so an extreme AUROC or ECE there
    is read as noise. With ``ece_expected`` (and ``ece_expected_p95``) columns
    (:func:`training.decision.expected_ece_by_landmark`) the ECE panel draws what a perfectly
    calibrated model's ECE would be on the same rows: ECE is never 0 on a few hundred rows, so a
    fixed target line would call chance a miscalibration. ``weighted`` (censoring weights):
    the bottom panel marks each landmark's Kish effective n (``effective_n``) on its rows,
    since the weighted metrics above rest on that many, not on the rows.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 9.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    a, b, c, d = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": (3, 3, 3, 2)})
    # One point per single landmark; rows for bands of landmarks (if any) are left out.
    landmark = pd.to_numeric(table[landmark_column(table)], errors="coerce")
    table = table.loc[landmark.notna()].assign(_k=landmark[landmark.notna()])
    k = table["_k"].to_numpy(dtype=float)
    a.plot(k, table["auroc"], marker="o", color="tab:blue")
    a.set_ylabel("AUROC")
    a.set_title(
        _titled("Discrimination and calibration by landmark", population, caption),
        fontsize="medium",
    )
    b.plot(k, table["ece"], marker="o", color="tab:red", label="ECE (10 equal-width bins)")
    top = float(np.nanmax(table["ece"])) if len(table) else 0.0
    if "ece_expected" in table.columns:
        b.plot(k, table["ece_expected"], color="grey", linestyle="--",
               label="expected if perfectly calibrated (median, simulated from predicted p)")  # fmt: skip
        if "ece_expected_p95" in table.columns:
            b.fill_between(k, 0, table["ece_expected_p95"].to_numpy(dtype=float), color="grey",
                           alpha=0.15, label="95% of perfectly calibrated draws")  # fmt: skip
            top = max(top, float(np.nanmax(table["ece_expected_p95"])))
    b.set_ylabel("ECE (probability)")
    b.set_ylim(0, max(0.06, top * 1.15))
    b.legend(loc="upper left", fontsize="small")
    c.plot(k, table["mean_probability"], marker="o", label="mean predicted probability")
    c.plot(k, table["prevalence"], marker="s", label="observed dropout rate")
    c.set_ylabel("probability of dropout")
    c.legend(loc="upper right", fontsize="small")
    d.bar(k, table["n"], color="tab:grey", width=0.7, label="landmark rows")
    if weighted and "effective_n" in table.columns:
        d.plot(k, table["effective_n"], linestyle="none", marker="_", markersize=14,
               markeredgewidth=2.5, color="black",
               label="effective n (Kish, censoring weights)")  # fmt: skip
        d.legend(loc="upper right", fontsize="small")
    d.set_ylabel("landmark rows")
    d.set_xlabel("landmark (appointment number at which the client was scored)")
    for ax in (a, b, c, d):
        ax.grid(alpha=0.3)
    d.set_xticks(k)
    return _save(fig, out_dir, LANDMARKS_PNG)


def write_decision_support(
    support: DecisionSupport, landmarks: pd.DataFrame, out_dir: Path | str
) -> dict[str, pd.DataFrame]:
    """Every decision-support plot and its table into ``out_dir``; returns the tables by name.

    Writes ``decision_curve.png/.csv``, ``alert_workload.png/.csv`` (when appointment dates
    were available), ``calibration_ci.png/.csv``, ``calibration_by_<subgroup>.png`` with
    ``calibration_subgroups.csv``, and ``landmarks.png`` (from ``landmarks``, when it has
    AUROC and ECE).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "decision_curve": support.decision_curve,
        "alert_workload": support.workload,
        "calibration_ci": support.calibration,
        "calibration_subgroups": support.subgroup_calibration,
    }
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    titled = {"population": support.population, "caption": support.weighting()}
    plot_decision_curve(support.decision_curve, out, **titled)
    if not support.workload.empty:
        plot_workload(support.workload, out, **titled)
    if not support.calibration.empty:
        plot_calibration_ci(support.calibration, out, **titled)
    for subgroup in pd.unique(support.subgroup_calibration["subgroup"]):
        plot_subgroup_calibration(
            support.subgroup_calibration,
            str(subgroup),
            out,
            population=support.population,
            weighted=support.effective_n is not None,
        )
    needed = {"auroc", "ece", "mean_probability", "prevalence", "n"}
    if not landmarks.empty and needed <= set(landmarks.columns):
        expected = support.expected_ece
        if not expected.empty:
            key = landmark_column(landmarks)
            k = pd.to_numeric(landmarks[key], errors="coerce")
            landmarks = landmarks.assign(
                ece_expected=k.map(expected.set_index("landmark")["ece_expected"]),
                ece_expected_p95=k.map(expected.set_index("landmark")["ece_expected_p95"]),
            )
            tables["landmark_expected_ece"] = expected
            expected.to_csv(out / "landmark_expected_ece.csv", index=False)
        plot_landmarks(landmarks, out, **titled, weighted=support.effective_n is not None)
    return tables
