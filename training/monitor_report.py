"""Rendering a :class:`~training.monitor.MonitorResult`: PNG plots, one self-contained HTML page,
a JSON summary, and the MLflow run that keeps them.

The HTML carries its CSS inline and its plots as embedded PNGs (no CDN, nothing fetched), so it
can be mailed or opened offline; the same PNGs are also written next to it. Clinic ids appear
(it is the clinics' own report); client ids never do: every number is an aggregate.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.drift import (
    KS_ALERT,
    KS_LEVEL,
    PSI_ALERT,
    PSI_LEVEL,
    PSI_WATCH,
    SCORE_MIN_SHARE,
    Drift,
)
from models.reference import CLINIC_MIN_CLIENTS, SCORE_BINS
from training.monitor import MonitorResult, SliceMonitor

#: MLflow experiment of monitoring runs.
MONITOR_EXPERIMENT = "alliance-risk-monitoring"
HTML_FILE = "monitor.html"
JSON_FILE = "monitor.json"
PLOTS = ("drift_psi.png", "score_distribution.png", "performance.png")

_COLOURS = {"ok": "#2e7d32", "watch": "#f9a825", "alert": "#c62828", "too_few": "#9e9e9e"}


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _drift_dict(d: Drift) -> dict[str, Any]:
    return {"psi": _finite(d.psi), "ks": _finite(d.ks), "n": d.n, "status": d.status}


def summary(result: MonitorResult) -> dict[str, Any]:
    """JSON-able summary: per slice the drift of score and groups, expected and realized."""

    def one(s: SliceMonitor) -> dict[str, Any]:
        r = s.realized
        return {
            "name": s.name,
            "n_rows": s.n_rows,
            "n_clients": s.n_clients,
            "status": s.status,
            "baseline": s.drift.baseline,
            "score": _drift_dict(s.drift.score),
            "groups": {g: _drift_dict(d) for g, d in s.drift.groups.items()},
            "expected_pending": {
                "n_rows": s.pending.n_rows,
                "auroc": _finite(s.pending.auroc),
                "brier": _finite(s.pending.brier),
                "dropout_rate": _finite(s.pending.dropout_rate),
            },
            "realized": None
            if r is None
            else {
                "n_rows": r.n_rows,
                "n_clients": r.n_clients,
                "auroc": _finite(r.auroc),
                "brier": _finite(r.brier),
                "ece": _finite(r.ece),
                "dropout_rate": _finite(r.dropout_rate),
                "expected_auroc": _finite(r.expected.auroc),
                "expected_brier": _finite(r.expected.brier),
                "expected_dropout_rate": _finite(r.expected.dropout_rate),
            },
        }

    return {
        "model": {"name": result.model_name, "version": result.model_version},
        "landmarks": result.landmarks,
        "status": result.status,
        "unmatched_outcomes": result.unmatched_outcomes,
        "thresholds": {
            "psi_watch": PSI_WATCH,
            "psi_alert": PSI_ALERT,
            "ks_alert": KS_ALERT,
            "ks_level": KS_LEVEL,
            "psi_level": PSI_LEVEL,
            "min_clients": result.min_clients,
        },
        "slices": [one(s) for s in (result.overall, *result.clinics)],
    }


def _slices(result: MonitorResult) -> list[SliceMonitor]:
    return [result.overall, *result.clinics]


def _figure(width: float, height: float) -> Any:
    """A figure on the Agg canvas, independent of pyplot's global state (as training.report)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_drift(result: MonitorResult, path: Path) -> None:
    from matplotlib.colors import ListedColormap

    slices = _slices(result)
    columns = ["score", *result.overall.drift.groups]
    statuses = [
        [s.drift.score.status, *(d.status for d in s.drift.groups.values())] for s in slices
    ]
    psis = [[s.drift.score.psi, *(d.psi for d in s.drift.groups.values())] for s in slices]
    order = ["ok", "watch", "alert", "too_few"]
    codes = np.array([[order.index(x) for x in row] for row in statuses])
    fig = _figure(1.0 + 0.85 * len(columns), 1.2 + 0.45 * len(slices))
    ax = fig.add_subplot()
    ax.imshow(codes, cmap=ListedColormap([_COLOURS[s] for s in order]), vmin=-0.5, vmax=3.5)
    for i, row in enumerate(psis):
        for j, v in enumerate(row):
            ax.text(j, i, _num(v, 2), ha="center", va="center", fontsize=8, color="white")
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(slices)), [s.name for s in slices], fontsize=8)
    ax.set_title("PSI by clinic and feature group (colour = status)", fontsize=10)
    fig.savefig(path, format="png")


def _plot_scores(result: MonitorResult, path: Path) -> None:
    bins = np.asarray(SCORE_BINS)
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    ax.bar(
        bins[:-1], result.reference_shares, width=np.diff(bins), align="edge",
        color="#cfd8dc", edgecolor="#90a4ae", label="reference (training, all clinics)",
    )  # fmt: skip
    for s in _slices(result):
        rows = (
            np.ones(result.probability.shape, bool)
            if s is result.overall
            else result.clinic == s.name
        )
        if not rows.any():
            continue
        counts, _ = np.histogram(np.clip(result.probability[rows], 0, 1), bins=bins)
        style = {"linewidth": 2.2, "color": "black"} if s is result.overall else {"linewidth": 1}
        ax.stairs(counts / rows.sum(), bins, label=s.name, **style)
    ax.set_xlabel("calibrated probability of dropout")
    ax.set_ylabel("share of rows")
    ax.set_title("Score distribution against the reference", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, format="png")


def _plot_performance(result: MonitorResult, path: Path) -> None:
    slices = _slices(result)
    x = np.arange(len(slices))
    pending = [s.pending.auroc for s in slices]
    realized = [s.realized.auroc if s.realized else math.nan for s in slices]
    expected_known = [s.realized.expected.auroc if s.realized else math.nan for s in slices]
    fig = _figure(max(5.0, 1.1 * len(slices) + 2), 3.4)
    ax = fig.add_subplot()
    w = 0.27
    ax.bar(x - w, pending, w, label="expected, outcome pending", color="#90caf9")
    ax.bar(x, expected_known, w, label="expected, outcome known", color="#1e88e5")
    ax.bar(x + w, realized, w, label="realized", color="#0d47a1")
    ax.set_xticks(x, [s.name for s in slices], fontsize=8)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("AUROC")
    ax.set_title("Expected (CBPE) and realized AUROC", fontsize=10)
    ax.legend(fontsize=7)
    fig.savefig(path, format="png")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#212121;
max-width:1300px}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f5f5f5}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:.6rem;color:#fff;font-size:.8rem}
.ok{background:#2e7d32}.watch{background:#f9a825}.alert{background:#c62828}
.too_few{background:#9e9e9e}.muted{color:#616161;font-size:.85rem}img{max-width:100%}
.wide{overflow-x:auto}
"""


_BASELINE = {"clinic": "its own", "pooled": "all clinics"}


def _badge(status: str, text: str | None = None) -> str:
    label = text if text is not None else status.replace("_", " ")
    return f'<span class="badge {status}">{html.escape(label)}</span>'


def _drift_table(result: MonitorResult) -> str:
    groups = list(result.overall.drift.groups)
    head = "".join(f"<th>{html.escape(g)}</th>" for g in groups)
    rows = []
    for s in _slices(result):
        d = s.drift
        cells = "".join(f"<td>{_badge(x.status, _num(x.psi, 2))}</td>" for x in d.groups.values())
        rows.append(
            f"<tr><td>{html.escape(s.name)}</td><td>{s.n_rows:,}</td><td>{s.n_clients:,}</td>"
            f"<td>{_BASELINE[d.baseline]}</td>"
            f"<td>{_badge(d.score.status, _num(d.score.psi, 2))}</td><td>{_num(d.score.ks, 2)}</td>"
            f"{cells}</tr>"
        )
    return (
        '<div class="wide"><table><tr><th>clinic</th><th>rows</th><th>clients</th>'
        f"<th>compared with</th><th>score PSI</th><th>score KS</th>{head}</tr>{''.join(rows)}"
        "</table></div>"
    )


def _performance_table(result: MonitorResult) -> str:
    rows = []
    for s in _slices(result):
        r = s.realized
        known = (
            f"<td>{r.n_rows:,}</td><td>{_num(r.auroc)}</td><td>{_num(r.expected.auroc)}</td>"
            f"<td>{_num(r.brier)}</td><td>{_num(r.expected.brier)}</td><td>{_num(r.ece)}</td>"
            f"<td>{_num(r.dropout_rate)}</td><td>{_num(r.expected.dropout_rate)}</td>"
            if r
            else '<td>0</td><td colspan="7" class="muted">no outcomes yet</td>'
        )
        rows.append(
            f"<tr><td>{html.escape(s.name)}</td><td>{s.pending.n_rows:,}</td>"
            f"<td>{_num(s.pending.auroc)}</td><td>{_num(s.pending.brier)}</td>"
            f"<td>{_num(s.pending.dropout_rate)}</td>{known}</tr>"
        )
    return (
        "<table><tr><th rowspan=2>clinic</th><th colspan=4>outcome pending: expected</th>"
        "<th colspan=8>outcome known: realized vs expected</th></tr><tr><th>rows</th>"
        "<th>AUROC</th><th>Brier</th><th>dropout rate</th><th>rows</th><th>AUROC</th>"
        "<th>exp. AUROC</th><th>Brier</th><th>exp. Brier</th><th>ECE</th><th>dropout rate</th>"
        f"<th>exp. rate</th></tr>{''.join(rows)}</table>"
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def render_html(result: MonitorResult, plots: dict[str, Path], generated: datetime) -> str:
    """The report page; ``plots`` maps each of :data:`PLOTS` to its written PNG."""
    model = html.escape(f"{result.model_name} v{result.model_version}".strip())
    alerts = result.alerts
    alert_text = (
        "; ".join(html.escape(f"{where}: {what}") for where, what in alerts) if alerts else "none"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>alliance-risk monitoring report</title>
<style>{_CSS}</style></head><body>
<h1>Is the model still right for these clinics? {_badge(result.status)}</h1>
<p class="muted">Model {model} · rows scored at the {html.escape(result.landmarks)} ·
generated {generated:%Y-%m-%d %H:%M} UTC · reference: {html.escape(result.reference_rows)}</p>
<p><b>Alerts:</b> {alert_text}</p>

<h2>1. Drift of the inputs and of the score</h2>
<p>Each cell is the PSI (population stability index) of new rows against the model's training
reference; a feature group shows its most drifted feature. A clinic is compared with its own
training reference where the model kept one (“its own”: at least {CLINIC_MIN_CLIENTS} reference
clients), else with all clinics together (“all clinics”): clinics differ through their
therapists, and that difference is not drift. <b>PSI</b> below {PSI_WATCH} is
no real change, {PSI_WATCH}–{PSI_ALERT} is worth watching, above {PSI_ALERT} a shift that needs
action (Siddiqi 2006), each only when the PSI is also beyond what chance alone gives at the
{PSI_LEVEL} level (a green cell above {PSI_WATCH} is within chance for these clients).
<b>KS</b> (largest gap between the cumulative distributions) alerts at {KS_ALERT} or more when
also significant at the {KS_LEVEL} level. Both count clients, not rows (a client's rows are not
independent: several features repeat one value per client). Missing
values count as their own bin. A clinic with fewer than {result.min_clients} clients is shown as
“too few” and not judged. Score bins are merged until each holds {SCORE_MIN_SHARE:.0%} of the
reference.</p>
{_drift_table(result)}
{_img(plots["drift_psi.png"], "PSI by clinic and feature group")}
{_img(plots["score_distribution.png"], "Score distribution against the reference")}

<h2>2. Performance: expected now, realized when outcomes arrive</h2>
<p>While outcomes are pending, <b>expected</b> AUROC, Brier score and dropout rate are
estimated from the calibrated probabilities alone (confidence-based performance estimation,
CBPE): if the model is still calibrated, a row with probability p drops out with probability p.
They cannot see a change in how the inputs relate to dropout; the <b>realized</b> metrics on
rows whose outcome is known can. A realized AUROC well below the expected one, or a realized
dropout rate far from the expected rate, means the model has lost calibration or discrimination
for that clinic. ECE is the expected calibration error on 10 equal-width bins.</p>
{_unmatched(result)}{_performance_table(result)}
{_img(plots["performance.png"], "Expected and realized AUROC")}
<p class="muted">Rows are (client, appointment) pairs; one client contributes several.
No client identifier appears in this report.</p>
</body></html>
"""


def _unmatched(result: MonitorResult) -> str:
    if not result.unmatched_outcomes:
        return ""
    return (
        f"<p><b>{result.unmatched_outcomes} later outcome(s) name a client that is not in the "
        "new data</b> and were ignored: check that the outcomes and the clients come from the "
        "same extract.</p>\n"
    )


def write_report(
    result: MonitorResult, out: Path, *, generated: datetime | None = None
) -> dict[str, Path]:
    """Write the PNG plots, ``monitor.html`` and ``monitor.json`` into ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    plots = {name: out / name for name in PLOTS}
    _plot_drift(result, plots["drift_psi.png"])
    _plot_scores(result, plots["score_distribution.png"])
    _plot_performance(result, plots["performance.png"])
    when = generated or datetime.now(UTC)
    (out / HTML_FILE).write_text(render_html(result, plots, when), encoding="utf-8")
    doc = {"generated": when.isoformat(), **summary(result)}
    (out / JSON_FILE).write_text(json.dumps(doc, indent=1, allow_nan=False), encoding="utf-8")
    return {"html": out / HTML_FILE, "json": out / JSON_FILE, **plots}


def _key(name: str) -> str:
    """A clinic id as an MLflow metric-name part (letters, digits, ``_ - . /`` and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", name)


def mlflow_metrics(result: MonitorResult) -> dict[str, float]:
    """Flat metrics: ``<slice>/score_psi``, ``<slice>/<group>_psi``, expected and realized."""
    out: dict[str, float] = {}
    for s in _slices(result):
        prefix = "overall" if s is result.overall else f"clinic/{_key(s.name)}"
        values = {
            "n_rows": float(s.n_rows),
            "score_psi": s.drift.score.psi,
            "score_ks": s.drift.score.ks,
            **{f"{g}_psi": d.psi for g, d in s.drift.groups.items()},
            "expected_auroc": s.pending.auroc,
            "expected_brier": s.pending.brier,
            "expected_dropout_rate": s.pending.dropout_rate,
        }
        if s.realized is not None:
            values |= {
                "realized_auroc": s.realized.auroc,
                "realized_brier": s.realized.brier,
                "realized_ece": s.realized.ece,
                "realized_dropout_rate": s.realized.dropout_rate,
            }
        out |= {f"{prefix}/{k}": float(v) for k, v in values.items() if math.isfinite(v)}
    return out


def log_monitor_run(
    result: MonitorResult,
    files: dict[str, Path],
    *,
    model_uri: str,
    experiment: str = MONITOR_EXPERIMENT,
) -> str:
    """Log the report as an MLflow run (metrics per clinic, the files as artifacts under
    ``report/``, tags naming the model); returns the run id."""
    import mlflow

    from training.tracking import ensure_experiment

    experiment_id = ensure_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags(
            {
                "alliance_risk.kind": "monitor",
                "model.name": result.model_name,
                "model.version": result.model_version,
                "monitored_model_uri": model_uri,
                "monitor.status": result.status,
                "monitor.landmarks": result.landmarks,
            }
        )
        mlflow.log_metrics(mlflow_metrics(result))
        for path in files.values():
            mlflow.log_artifact(str(path), artifact_path="report")
        return str(run.info.run_id)
