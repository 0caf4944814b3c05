"""Report artefacts of a training or evaluation run: PNG plots and a Markdown model card.

Everything here takes plain data (arrays, dicts, DataFrames) and writes or returns text or
files; nothing talks to MLflow. The plots use matplotlib's Agg canvas directly, chosen inside
each function, so importing this module neither imports matplotlib nor touches pyplot's global
backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from training.metrics import reliability_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: What the score is for, and what it must never be used for (issue 4, model card).
INTENDED_USE = (
    "The score estimates the probability that a client drops out of therapy, from their "
    "alliance ratings and attendance so far. It is meant to **prompt a conversation**: an "
    "alliance check-in in the next session, or outreach after a missed appointment.\n\n"
    "It must **never** be used to discharge a client, to ration or deny care, to decide "
    "eligibility or funding, or to judge a therapist. A high score is a reason to talk with "
    "the client, not a verdict about them."
)
DEFAULT_DROPOUT_DEFINITION = (
    "Dropout is the client ending therapy unilaterally before the planned end, as recorded in "
    "the `outcome` column (`dropout`); `completed` is the alternative, and `ongoing` clients "
    "are censored and left out of training and evaluation."
)
PLACEHOLDER = "_(to be filled in)_"
SMALL_SUBGROUP_NOTE = "too small to judge"

Curves = Mapping[str, tuple[Any, Any]]
#: Everything ``str.splitlines`` treats as a line boundary.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


# --------------------------------------------------------------------------- inputs


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


def _save(fig: Figure, out_dir: Path | str, filename: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    fig.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------- plots


def plot_calibration(
    y: Any,
    p: Any,
    out_dir: Path | str,
    *,
    n_bins: int = 10,
    filename: str = "calibration.png",
    title: str = "Calibration on the test set",
) -> Path:
    """Reliability curve (``n_bins`` equal-width bins) above a histogram of rows per bin.

    Parameters
    ----------
    y : array-like of {0, 1}
        Observed dropout.
    p : array-like of float in [0, 1]
        Calibrated predicted probability of dropout.
    out_dir : path
        Directory to write into (created if missing).

    Returns
    -------
    Path
        The PNG written, ``out_dir / filename``.
    """
    y_arr, p_arr = _binary_and_probs(y, p, "calibration")
    # The same bins as the ECE the report quotes (training.metrics), so plot and number agree.
    table = reliability_table(y_arr, p_arr, n_bins)
    fig = _new_figure(2, height_ratios=(3, 1))
    top, bottom = fig.axes
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    seen = table["n"] > 0
    top.plot(
        table.loc[seen, "mean_predicted"],
        table.loc[seen, "observed_rate"],
        marker="o",
        label="model",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed dropout rate")
    top.set_title(title)
    top.legend(loc="upper left")
    centres = (table["bin_low"] + table["bin_high"]) / 2
    bottom.bar(centres, table["n"], width=1.0 / n_bins * 0.9, color="tab:blue")
    bottom.set_xlabel("predicted probability of dropout")
    bottom.set_ylabel("rows")
    return _save(fig, out_dir, filename)


def plot_roc(
    curves: Curves,
    out_dir: Path | str,
    *,
    filename: str = "roc.png",
    title: str = "ROC on the test set",
) -> Path:
    """ROC curves of the model and its baselines on one plot, AUROC in the legend.

    Parameters
    ----------
    curves : Mapping[str, (y, p)]
        Name (e.g. ``"model"``, ``"logistic baseline"``, ``"alert rule"``) to observed dropout
        (0/1) and score in [0, 1]; a 0/1 rule gives a single operating point.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    fig = _new_figure()
    ax = fig.axes[0]
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    for name, (y, p) in curves.items():
        y_arr, p_arr = _binary_and_probs(y, p, name)
        _both_classes(y_arr, name)
        fpr, tpr, _ = roc_curve(y_arr, p_arr)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y_arr, p_arr):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _save(fig, out_dir, filename)


def plot_pr(
    curves: Curves,
    out_dir: Path | str,
    *,
    filename: str = "pr.png",
    title: str = "Precision-recall on the test set",
) -> Path:
    """Precision-recall curves of the model and its baselines, AUPRC in the legend.

    The horizontal line is the dropout rate of the first curve's rows: what flagging at random
    achieves.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    if not curves:
        raise ValueError("plot_pr needs at least one curve")
    fig = _new_figure()
    ax = fig.axes[0]
    prevalences = []
    for name, (y, p) in curves.items():
        y_arr, p_arr = _binary_and_probs(y, p, name)
        _both_classes(y_arr, name)
        prevalences.append(float(y_arr.mean()))
        precision, recall, _ = precision_recall_curve(y_arr, p_arr)
        auprc = average_precision_score(y_arr, p_arr)
        ax.step(recall, precision, where="post", label=f"{name} (AUPRC {auprc:.3f})")
    prevalence = prevalences[0]
    ax.axhline(prevalence, linestyle="--", color="grey", label=f"dropout rate {prevalence:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_title(title)
    ax.legend(loc="upper right")
    return _save(fig, out_dir, filename)


# --------------------------------------------------------------------------- markdown


def _cell(value: Any, float_format: str) -> str:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, float | np.floating):
        text = float_format.format(float(value))
    elif isinstance(value, np.integer):
        text = str(int(value))
    else:
        text = str(value)
    # A pipe would end the cell; any line boundary would end the row.
    return _LINE_BREAKS.sub(" ", text.replace("|", r"\|"))


def dataframe_to_markdown(
    df: pd.DataFrame, *, index: bool = False, float_format: str = "{:.3f}"
) -> str:
    """A GitHub-flavoured Markdown table of ``df``, without needing ``tabulate``.

    Numeric columns are right-aligned, others left-aligned; floats use ``float_format``;
    missing values are empty cells; pipes and newlines inside cells are escaped or flattened.
    """
    frame = df.reset_index() if index else df
    headers = [_cell(c, "{}") for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    rows = [
        [_cell(v, float_format) for v in record]
        for record in frame.itertuples(index=False, name=None)
    ]
    widths = [max([3, len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "| "
        + " | ".join(
            ("-" * (w - 1) + ":") if num else "-" * w
            for w, num in zip(widths, numeric, strict=True)
        )
        + " |"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _metrics_with_ci(metrics: pd.DataFrame, float_format: str) -> pd.DataFrame:
    """``metric | value | 95% CI`` from columns ``metric, value[, ci_low, ci_high]``."""
    missing = {"metric", "value"} - set(metrics.columns)
    if missing:
        raise ValueError(f"metrics table lacks column(s): {', '.join(sorted(missing))}")
    ci = []
    for row in metrics.itertuples(index=False):
        low = getattr(row, "ci_low", None)
        high = getattr(row, "ci_high", None)
        if low is None or high is None or pd.isna(low) or pd.isna(high):
            ci.append("")
        else:
            ci.append(f"{float_format.format(low)} to {float_format.format(high)}")
    return pd.DataFrame({"metric": metrics["metric"], "value": metrics["value"], "95% CI": ci})


def _subgroups_flagged(subgroups: pd.DataFrame, min_n: int) -> pd.DataFrame:
    if "n" not in subgroups.columns:
        raise ValueError("subgroup table lacks column: n")
    n = pd.to_numeric(subgroups["n"], errors="coerce")
    note = np.where(n >= min_n, "", f"{SMALL_SUBGROUP_NOTE} (n < {min_n})")
    return subgroups.assign(note=note)


def _data_section(data: Mapping[str, Any]) -> list[str]:
    labels = {
        "clients": "Clients",
        "sessions": "Sessions",
        "dropout_rate": "Dropout rate",
        "intake_from": "First intake date",
        "intake_to": "Last intake date",
        "profile": "Instrument profile",
        "fingerprint": "Dataset fingerprint (SHA-256)",
        "source": "Source",
        "splits": "Split sizes (clients)",
    }
    lines = []
    for key, label in labels.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        elif key == "fingerprint":
            value = f"`{value}`"
        elif isinstance(value, float):
            value = f"{value:.3f}"
        lines.append(f"- **{label}:** {value}")
    extra = [k for k in data if k not in labels and k != "simulated"]
    lines.extend(f"- **{k}:** {data[k]}" for k in extra)
    return lines or [f"- {PLACEHOLDER}"]


def _table_or_none(df: pd.DataFrame | None, what: str, float_format: str) -> str:
    if df is None or df.empty:
        return f"_No {what} available for this run._"
    return dataframe_to_markdown(df, float_format=float_format)


def model_card(
    *,
    model_name: str,
    data: Mapping[str, Any],
    model: Mapping[str, Any],
    metrics: pd.DataFrame,
    landmarks: pd.DataFrame | None = None,
    subgroups: pd.DataFrame | None = None,
    baselines: pd.DataFrame | None = None,
    importance: pd.DataFrame | None = None,
    simulated: bool = False,
    model_version: str | None = None,
    run_id: str | None = None,
    git_commit: str | None = None,
    created_at: str | None = None,
    contact: str | None = None,
    dropout_definition: str = DEFAULT_DROPOUT_DEFINITION,
    subgroup_min_n: int = 200,
    float_format: str = "{:.3f}",
) -> str:
    """The model card as Markdown, in the order a clinician or reviewer reads it.

    Parameters
    ----------
    model_name : str
        Registered model name, e.g. ``"alliance-risk"``.
    data : Mapping
        Population and data: any of ``clients``, ``sessions`` (counts), ``dropout_rate``,
        ``intake_from``/``intake_to`` (dates as text), ``profile``, ``fingerprint``,
        ``source``, ``splits`` (mapping split name to client count). Other keys are listed too.
    model : Mapping
        ``estimator`` (e.g. ``"XGBoost, 300 trees of depth 4"``), ``calibration`` (e.g.
        ``"sigmoid on the margin, fitted on the calibration split"``), optional ``params``
        (mapping) and ``features`` (count).
    metrics : pandas.DataFrame
        Test metrics: ``metric``, ``value`` and optionally ``ci_low``/``ci_high`` (95%).
    landmarks : pandas.DataFrame, optional
        Per-landmark table as computed, e.g. ``landmark, n, auroc, brier, ece``.
    subgroups : pandas.DataFrame, optional
        Per-subgroup table with at least ``n``; rows below ``subgroup_min_n`` are flagged as
        too small to judge.
    baselines : pandas.DataFrame, optional
        One row per model (the model and each baseline), metric columns side by side.
    importance : pandas.DataFrame, optional
        Global importance by explanation group.
    simulated : bool
        Trained on simulated data: the card then says, first and in bold, that its figures
        describe the simulator, not any clinic.
    model_version, run_id, git_commit, created_at, contact : str, optional
        Filled in where given, otherwise left as visible placeholders.
    dropout_definition : str
        How dropout was defined for the labels.

    Returns
    -------
    str
        Markdown text, ending with a newline.
    """
    simulated_warning = (
        "> **Warning: trained and evaluated on simulated data.** The figures below describe "
        "the simulator, not any clinic's clients. Validate on your own data "
        "(`alliance-risk evaluate`) before any use."
    )
    version = model_version or PLACEHOLDER
    params = model.get("params")
    params_text = (
        ", ".join(f"`{k}={v}`" for k, v in sorted(params.items())) if params else PLACEHOLDER
    )
    subgroup_text = (
        _table_or_none(
            _subgroups_flagged(subgroups, subgroup_min_n), "subgroup results", float_format
        )
        if subgroups is not None and not subgroups.empty
        else _table_or_none(None, "subgroup results", float_format)
    )

    parts: list[str] = [f"# Model card: {model_name} (version {version})", ""]
    if simulated:
        parts += [simulated_warning, ""]
    parts += [
        "## Details",
        "",
        f"- **Model name:** {model_name}",
        f"- **Version:** {version}",
        f"- **MLflow run:** {run_id or PLACEHOLDER}",
        f"- **Git commit:** {git_commit or PLACEHOLDER}",
        f"- **Created (UTC):** {created_at or PLACEHOLDER}",
        f"- **Contact:** {contact or PLACEHOLDER}",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Population and data",
        "",
        *_data_section(data),
        f"- **Data origin:** {'simulated' if simulated else 'clinic records'}",
        "",
        "## Model and calibration",
        "",
        f"- **Estimator:** {model.get('estimator', PLACEHOLDER)}",
        f"- **Calibration:** {model.get('calibration', PLACEHOLDER)}",
        f"- **Features:** {model.get('features', PLACEHOLDER)}",
        f"- **Hyperparameters:** {params_text}",
        "",
        "## Test metrics",
        "",
        dataframe_to_markdown(_metrics_with_ci(metrics, float_format), float_format=float_format),
        "",
        "## By landmark",
        "",
        _table_or_none(landmarks, "per-landmark results", float_format),
        "",
        "## By subgroup",
        "",
        f"Subgroups with fewer than {subgroup_min_n} test rows are marked "
        f"*{SMALL_SUBGROUP_NOTE}*: their metrics are too noisy to support any conclusion.",
        "",
        subgroup_text,
        "",
        "## Baselines, on the same test rows",
        "",
        _table_or_none(baselines, "baseline results", float_format),
        "",
    ]
    if importance is not None and not importance.empty:
        parts += [
            "## Global importance by explanation group",
            "",
            dataframe_to_markdown(importance, float_format=float_format),
            "",
        ]
    limitations = [
        "- **Dropout definition.** " + dropout_definition,
        "- **Censoring.** Clients still in therapy have no outcome yet; leaving them out can "
        "bias the training population towards shorter treatments.",
        "- **No causal claims.** The explanation shows which inputs moved this score; it does "
        "not show that changing them would change whether a client drops out. The same holds "
        "for the what-if scenarios (`POST /v1/risk/what-if`): each is the model's risk for a "
        "modified history, an association learned from past clients, not a promise that the "
        "change would cause a lower risk.",
        "- **Calibration drifts.** Probabilities are calibrated to the population above; a "
        "different clinic, referral mix or period needs re-validation before the numbers can "
        "be read as probabilities.",
        "- **Small subgroups.** Results for subgroups below "
        f"{subgroup_min_n} test rows are not evidence either way.",
    ]
    if simulated:
        limitations.insert(
            0,
            "- **Simulated data.** Every figure here comes from simulated clients; the "
            "simulator's assumptions, not clinical reality, set how well the model can do.",
        )
    parts += ["## Limitations", "", *limitations, ""]
    return "\n".join(parts)
