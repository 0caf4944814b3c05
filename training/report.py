"""The Markdown model card of a training run, and Markdown tables.

Everything here takes plain data (dicts, DataFrames) and returns text; nothing talks to MLflow.
The plots live in :mod:`training.report_plots` (re-exported here: ``plot_calibration``,
``plot_roc``, ``plot_pr``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from training import censoring
from training.report_plots import plot_calibration, plot_pr, plot_roc

__all__ = ["dataframe_to_markdown", "model_card", "plot_calibration", "plot_pr", "plot_roc"]

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
    "have no outcome yet (censored; see Censoring in the data section)."
)
#: Where the risk bands and the calibrator were fitted, when the card is not told.
DEFAULT_HELD_OUT_ROWS = "the calibration split's landmark rows"
PLACEHOLDER = "_(to be filled in)_"
SMALL_SUBGROUP_NOTE = "too small to judge"
#: The promotion gate's defaults (``training.registry.evaluate_gates``; a test keeps them equal):
#: a subgroup with at least ``subgroup_min_n`` test rows and an ECE above this fails it.
SUBGROUP_GATE_MAX_ECE = 0.10
#: Plots the decision-support section points to (written by ``training.report_plots``).
DECISION_PLOTS = (
    (
        "decision_curve.png",
        "net benefit against threshold: model (95% band, clients "
        "resampled), alert rule, treat all/none",
    ),
    ("alert_workload.png", "alerts per clinician-week and share of dropouts caught"),
    ("calibration_ci.png", "calibration on quantile bins, 95% Wilson intervals by client"),
    ("calibration_by_<subgroup>.png", "the same per clinic, age band, gender, referral"),
    ("landmarks.png", "AUROC, ECE and mean predicted vs observed per landmark"),
)

#: Everything ``str.splitlines`` treats as a line boundary.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


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


def _subgroups_flagged(
    subgroups: pd.DataFrame, min_n: int, max_ece: float = SUBGROUP_GATE_MAX_ECE
) -> pd.DataFrame:
    """The subgroup table with a ``note`` per row: too small to judge, or the promotion gate
    it fails and why; ``value`` headed ``group``."""
    if "n" not in subgroups.columns:
        raise ValueError("subgroup table lacks column: n")
    n = pd.to_numeric(subgroups["n"], errors="coerce")
    ece = pd.to_numeric(subgroups.get("ece", pd.Series(np.nan, index=subgroups.index)))
    judged = (n >= min_n).to_numpy()
    notes = []
    for ok, err in zip(judged, ece.to_numpy(dtype=float), strict=True):
        if not ok:
            notes.append(f"{SMALL_SUBGROUP_NOTE} (n < {min_n})")
        elif not err <= max_ece:
            shown = "not measurable" if np.isnan(err) else f"{err:.3f}"
            notes.append(f"**fails the subgroup ECE gate**: ECE {shown} > {max_ece:.2f}")
        else:
            notes.append("")
    return subgroups.rename(columns={"value": "group"}).assign(note=notes)


def _landmarks_named(landmarks: pd.DataFrame) -> pd.DataFrame:
    """The per-landmark table with its key column headed ``landmark`` (it is ``value`` as the
    evaluation computes it per subgroup column)."""
    if "value" in landmarks.columns and "landmark" not in landmarks.columns:
        return landmarks.rename(columns={"value": "landmark"})
    return landmarks


def _bands_section(
    bands: Mapping[str, Any] | None, held_out: str = DEFAULT_HELD_OUT_ROWS
) -> list[str]:
    """How the risk bands were set (the stored rule and its parameter) and their thresholds;
    ``held_out`` names the rows they were set on."""
    if not bands:
        return ["_No risk bands recorded for this model._"]
    moderate, high = float(bands["moderate_from"]), float(bands["high_from"])
    share = float(bands.get("high_share", np.nan))
    if bands.get("rule", "alert_rate") == "net_benefit":
        pt = float(bands["threshold_probability"])
        rule = (
            f"net benefit at threshold probability {pt:.2f} (`--high-band net-benefit:{pt:g}`): "
            f"a client is *high* when the predicted risk is at least {pt:.2f}, the threshold at "
            "which acting maximises net benefit when one missed dropout weighs as much as "
            f"{(1 - pt) / pt:.1f} unneeded check-ins; {share:.1%} of {held_out} are *high*"
        )
    else:
        rule = (
            f"target alert rate {share:.1%} (`--high-band alert-rate:{share:g}`): the "
            f"highest-risk {share:.1%} of {held_out} are *high*"
        )
    table = pd.DataFrame(
        {
            "band": ["low", "moderate", "high"],
            "from probability": [0.0, moderate, high],
            "below probability": [moderate, high, 1.0],
        }
    )
    return [
        f"- **High-band rule:** {rule}.",
        f"- **Moderate band:** from the mean predicted risk of {held_out} (the base rate of "
        "landmark rows).",
        "",
        dataframe_to_markdown(table),
    ]


def _censoring_limitation(summary: Any) -> str:
    """The Limitations line on censoring, from the run's censoring summary (method)."""
    if isinstance(summary, Mapping) and summary.get("method") == "ipcw":
        return (
            "- **Censoring.** Clients still in therapy have no outcome yet. Training and the "
            "test metrics weight the ended episodes by inverse probability of censoring "
            "(IPCW), which holds only under its assumption (censoring depends on the intake "
            "date alone) and cannot stand in for episodes longer than any evaluated client's "
            "follow-up: at late landmarks of a recent test period the weighted metrics rest "
            "on few clients (see the effective sample size)."
        )
    return (
        "- **Censoring.** Clients still in therapy have no outcome yet; they are left out of "
        "training and evaluation unweighted, which biases both towards shorter treatments "
        "when censoring depends on the intake date."
    )


def _decision_section(decision: pd.DataFrame | None, float_format: str) -> list[str]:
    intro = (
        "On the test split. Net benefit counts landmark rows (each scored session is a decision "
        "to act or not) in dropouts per row, net of false alerts weighted by the threshold's "
        "harm ratio (Vickers & Elkin 2006); *treat all* alerts at every session, *treat none* "
        "scores 0. Workload counts the test clients' sessions only: a clinician's full caseload "
        "adds the clients of the other splits, so multiply *alerts per 100 sessions* by your "
        "own weekly session volume. *Dropouts caught* counts clients (episodes) alerted at any "
        "session before they left."
    )
    plots = [f"- `report/{name}`: {what}" for name, what in DECISION_PLOTS]
    if decision is None or decision.empty:
        return [intro, "", "_No decision-support results for this run._", "", *plots]
    return [intro, "", dataframe_to_markdown(decision, float_format=float_format), "", *plots]


def _data_section(data: Mapping[str, Any]) -> list[str]:
    labels = {
        "clients": "Clients",
        "sessions": "Sessions",
        "completed": "Completed episodes",
        "dropout": "Dropout episodes",
        "ongoing": "Ongoing episodes (censored)",
        "dropout_rate": "Dropout rate (per episode: dropouts / ended episodes)",
        "intake_from": "First intake date",
        "intake_to": "Last intake date",
        "profile": "Instrument profile",
        "fingerprint": "Dataset fingerprint (SHA-256)",
        "source": "Source",
        "splits": "Split sizes (clients)",
        "landmark_rows": "Landmark rows (scored sessions) per split",
        "held_out_clients": "Held-out clients gathered to the driver (Dask engine)",
        "reference_profile": "Drift reference profile",
        "cross_fit_clients": "Cross-fitted calibration (Dask engine)",
        "cross_fit_alignment": "Cross-fitted calibration, fold models' level",
    }
    lines = []
    for key, label in labels.items():
        if key not in data:
            continue
        value = data[key]
        text = f"`{value}`" if key == "fingerprint" else _plain(value)
        lines.append(f"- **{label}:** {text}")
    if isinstance(data.get("censoring"), Mapping):
        lines.append(f"- **Censoring:** {censoring.describe(data['censoring'])}")
    extra = [k for k in data if k not in labels and k not in ("simulated", "censoring")]
    lines.extend(f"- **{str(k).replace('_', ' ').capitalize()}:** {_plain(data[k])}" for k in extra)
    return lines or [f"- {PLACEHOLDER}"]


def _plain(value: Any) -> str:
    """A value as card text: mappings as ``key: value`` lists, floats to 3 places, never a
    Python ``repr`` of a dict or list."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or "none"
    if isinstance(value, float | np.floating):
        return f"{float(value):,.3f}"
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return f"{int(value):,}"
    return str(value)


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
    bands: Mapping[str, Any] | None = None,
    decision: pd.DataFrame | None = None,
    simulated: bool = False,
    model_version: str | None = None,
    run_id: str | None = None,
    git_commit: str | None = None,
    created_at: str | None = None,
    contact: str | None = None,
    dropout_definition: str = DEFAULT_DROPOUT_DEFINITION,
    subgroup_min_n: int = 200,
    subgroup_max_ece: float = SUBGROUP_GATE_MAX_ECE,
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
        Per-subgroup table with at least ``n`` (and ``ece``); rows below ``subgroup_min_n``
        are flagged as too small to judge, judged rows with an ECE above ``subgroup_max_ece``
        as failing the promotion gate.
    baselines : pandas.DataFrame, optional
        One row per model (the model and each baseline), metric columns side by side.
    importance : pandas.DataFrame, optional
        Global importance by explanation group.
    bands : Mapping, optional
        :meth:`models.scorer.RiskBands.to_dict`: thresholds and the high-band rule.
    decision : pandas.DataFrame, optional
        :meth:`training.decision.DecisionSupport.card_table`: net benefit and workload at a
        few thresholds.
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
            _subgroups_flagged(subgroups, subgroup_min_n, subgroup_max_ece),
            "subgroup results",
            float_format,
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
        "One row per landmark (the appointment number a client was scored at); rates and "
        "counts are per landmark row.",
        "",
        _table_or_none(
            None if landmarks is None else _landmarks_named(landmarks),
            "per-landmark results",
            float_format,
        ),
        "",
        "## By subgroup",
        "",
        f"Subgroups with fewer than {subgroup_min_n} test rows are marked "
        f"*{SMALL_SUBGROUP_NOTE}*: their metrics are too noisy to support any conclusion. "
        f"A judged subgroup whose ECE is above {subgroup_max_ece:.2f} fails the promotion "
        "gate (`alliance-risk promote` refuses it without `--force`); its note says so.",
        "",
        subgroup_text,
        "",
        "## Baselines, on the same test rows",
        "",
        _table_or_none(baselines, "baseline results", float_format),
        "",
        "## Risk bands",
        "",
        *_bands_section(bands, str(model.get("held_out_rows", DEFAULT_HELD_OUT_ROWS))),
        "",
        "## Decision support: net benefit and alert workload",
        "",
        *_decision_section(decision, float_format),
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
        _censoring_limitation(data.get("censoring")),
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
