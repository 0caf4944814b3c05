"""Promotion gates and the ``champion`` alias of the MLflow model registry.

A candidate version becomes the champion only when it passes the gates against the current
champion, evaluated by the caller on the same test rows, or when an analyst forces it with a
reason. Every decision is written to the version's tags, so the registry is the audit trail:

``promotion.gates``
    JSON list of the gate checks (name, value, threshold, passed, detail).
``promotion.forced``
    ``"true"`` when the alias moved although the gates did not pass.
``promotion.actor`` / ``promotion.at`` / ``promotion.reason``
    Who (default: the OS user), when (UTC ISO-8601) and why.
``promotion.previous_champion``
    The version that held the alias before, ``""`` if none: what a rollback moves it back to.
``promotion.refused_at`` / ``promotion.refused_by`` / ``promotion.failed_checks``
    Written instead when a promotion is refused; the alias does not move.
``promotion.shadow``
    When the analyst gave shadow comparisons (``promote --shadow-log``): their JSON summary,
    written with either decision. It informs; it does not gate.

Registry stages are deprecated in MLflow 3, so only aliases are used.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)

#: The alias the service loads: ``models:/<name>@champion``.
CHAMPION_ALIAS = "champion"

TAG_GATES = "promotion.gates"
TAG_FORCED = "promotion.forced"
TAG_ACTOR = "promotion.actor"
TAG_AT = "promotion.at"
TAG_REASON = "promotion.reason"
TAG_PREVIOUS = "promotion.previous_champion"
TAG_REFUSED_AT = "promotion.refused_at"
TAG_REFUSED_BY = "promotion.refused_by"
TAG_FAILED_CHECKS = "promotion.failed_checks"
TAG_SHADOW = "promotion.shadow"

#: Metrics of one model on the test rows, e.g. ``{"auroc": 0.81, "ece": 0.02}``.
Metrics = Mapping[str, float]

SUBGROUP_COLUMNS = ("subgroup", "value", "n", "ece")
#: Columns of the landmark-band table the band gate reads (ModelEvaluation.band_table).
BAND_COLUMNS = (
    "landmark",
    "n_clients",
    "events",
    "ece",
    "calibration_intercept",
    "citl_ci_low",
    "citl_ci_high",
)
_MAX_DETAIL_CHARS = 500


@dataclass(frozen=True)
class GateCheck:
    """One gate: ``value`` compared with ``threshold``; ``value`` is ``None`` when not applicable."""

    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        """JSON-safe form: NaN becomes ``None``."""
        out = asdict(self)
        if self.value is not None and not math.isfinite(self.value):
            out["value"] = None
        return out


@dataclass(frozen=True)
class GateResult:
    """All gate checks of a candidate; ``passed`` only if every check passed."""

    passed: bool
    checks: tuple[GateCheck, ...]

    @property
    def failed(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_json(self) -> str:
        """The checks as a JSON list (what ``promotion.gates`` holds)."""
        return json.dumps([c.as_dict() for c in self.checks], sort_keys=True)


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote` did. ``promoted`` is False for a refused promotion; ``message`` says why."""

    name: str
    version: str
    promoted: bool
    forced: bool
    previous_champion: str | None
    actor: str
    at: str
    message: str
    failed_checks: tuple[GateCheck, ...] = ()


def _metric(metrics: Metrics, key: str, who: str) -> float:
    try:
        return float(metrics[key])
    except KeyError:
        raise ValueError(f"{who} metrics have no {key!r}") from None


def _worse(value: float, threshold: float) -> bool:
    """``value`` exceeds ``threshold``; NaN counts as failing (an unmeasured model cannot pass)."""
    return not value <= threshold


def _auroc_check(candidate: Metrics, champion: Metrics | None, max_drop: float) -> GateCheck:
    cand = _metric(candidate, "auroc", "candidate")
    if champion is None:
        return GateCheck("auroc_drop", None, max_drop, True, "no champion: passes")
    champ = _metric(champion, "auroc", "champion")
    drop = champ - cand
    passed = not _worse(drop, max_drop)
    detail = f"candidate AUROC {cand:.4f} vs champion {champ:.4f} (drop {drop:+.4f})"
    return GateCheck("auroc_drop", drop, max_drop, passed, detail)


def _ece_check(candidate: Metrics, max_ece: float) -> GateCheck:
    ece = _metric(candidate, "ece", "candidate")
    passed = not _worse(ece, max_ece)
    return GateCheck("ece", ece, max_ece, passed, f"candidate ECE {ece:.4f}")


def _subgroup_check(subgroups: pd.DataFrame, min_n: int, max_ece: float) -> GateCheck:
    missing = [c for c in SUBGROUP_COLUMNS if c not in subgroups.columns]
    if missing:
        raise ValueError(f"subgroups table lacks column(s): {', '.join(missing)}")
    n = pd.to_numeric(subgroups["n"], errors="coerce")
    judged = subgroups.loc[n >= min_n]
    too_small = int((~(n >= min_n)).sum())
    note = f"; {too_small} subgroup(s) below {min_n} rows not judged" if too_small else ""
    if judged.empty:
        return GateCheck(
            "subgroup_ece", None, max_ece, True, f"no subgroup with at least {min_n} rows{note}"
        )
    ece = pd.to_numeric(judged["ece"], errors="coerce").astype(float)
    failing = judged.loc[~(ece <= max_ece)]
    worst = float(ece.max()) if ece.notna().all() else math.nan
    if failing.empty:
        detail = f"{len(judged)} subgroup(s) judged, worst ECE {worst:.4f}{note}"
        return GateCheck("subgroup_ece", worst, max_ece, True, detail)
    listed = ", ".join(
        f"{group}={value} (n={int(rows)}, ECE {err:.4f})"
        for group, value, rows, err in zip(
            failing["subgroup"],
            failing["value"],
            n.loc[failing.index],
            ece.loc[failing.index],
            strict=True,
        )
    )
    detail = f"{len(failing)} of {len(judged)} judged subgroup(s) above {max_ece}: {listed}{note}"
    if len(detail) > _MAX_DETAIL_CHARS:
        detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
    return GateCheck("subgroup_ece", worst, max_ece, False, detail)


def _band_check(bands: pd.DataFrame, min_events: int, citl_target: float) -> GateCheck:
    """Calibration-in-the-large per landmark band, judged by its confidence interval.

    A band is refused only when its whole 95% CITL interval (client-clustered sandwich,
    :func:`training.metrics.citl_interval`) lies outside +-``citl_target``: the data then show
    miscalibration beyond the target, not merely an estimate that chance pushed past it. Bands
    with fewer than ``min_events`` dropout rows are not judged (a sandwich interval from a
    handful of events is unreliable). ECE is shown, not judged: a band's ECE under perfect
    calibration depends on its size, its spread of risk and the clustering of rows in clients,
    so a fixed limit refuses small calibrated bands by chance, and the overall and subgroup ECE
    checks remain.
    """
    missing = [c for c in BAND_COLUMNS if c not in bands.columns]
    if missing:
        raise ValueError(f"landmark band table lacks column(s): {', '.join(missing)}")
    limit = f"95% CITL interval overlapping +-{citl_target}"
    events = pd.to_numeric(bands["events"], errors="coerce")
    judged = bands.loc[events >= min_events]
    too_small = int((~(events >= min_events)).sum())
    note = f"; {too_small} band(s) below {min_events} dropouts not judged" if too_small else ""
    if judged.empty:
        detail = f"no landmark band with at least {min_events} dropouts{note}"
        return GateCheck("landmark_band_calibration", None, citl_target, True, detail)
    citl = pd.to_numeric(judged["calibration_intercept"], errors="coerce").astype(float)
    low = pd.to_numeric(judged["citl_ci_low"], errors="coerce").astype(float)
    high = pd.to_numeric(judged["citl_ci_high"], errors="coerce").astype(float)
    # NaN fails, as everywhere in the gates.
    bad = ~((low <= citl_target) & (high >= -citl_target))
    worst = float(citl.abs().max()) if citl.notna().all() else math.nan

    def describe(rows: pd.DataFrame) -> str:
        return ", ".join(
            f"landmarks {r.landmark} (n={int(r.n_clients)} clients, events={int(r.events)}, "
            f"CITL {float(r.calibration_intercept):+.3f} [{float(r.citl_ci_low):+.3f}, "
            f"{float(r.citl_ci_high):+.3f}], ECE {float(r.ece):.4f})"
            for r in rows.itertuples(index=False)
        )

    if not bad.any():
        detail = f"{len(judged)} landmark band(s) judged ({limit}): {describe(judged)}{note}"
        if len(detail) > _MAX_DETAIL_CHARS:
            detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
        return GateCheck("landmark_band_calibration", worst, citl_target, True, detail)
    detail = (
        f"{int(bad.sum())} of {len(judged)} landmark band(s) with the 95% CITL interval "
        f"outside +-{citl_target}: {describe(judged.loc[bad])}{note}"
    )
    return GateCheck("landmark_band_calibration", worst, citl_target, False, detail)


def evaluate_gates(
    candidate: Metrics,
    champion: Metrics | None,
    subgroups: pd.DataFrame,
    *,
    max_auroc_drop: float = 0.01,
    max_ece: float = 0.05,
    subgroup_min_n: int = 200,
    max_subgroup_ece: float = 0.10,
    bands: pd.DataFrame | None = None,
    band_min_events: int = 50,
    band_citl_target: float = 0.1,
) -> GateResult:
    """Check a candidate against the promotion gates. Pure: reads nothing, writes nothing.

    Parameters
    ----------
    candidate, champion : Mapping[str, float]
        Test metrics with at least ``auroc`` and ``ece`` (10-bin expected calibration error,
        probability units), computed by the caller on the SAME test rows for both models.
        ``champion`` is ``None`` when there is no champion yet: the AUROC check then passes
        and says so.
    subgroups : pandas.DataFrame
        The candidate's subgroup table with columns ``subgroup`` (e.g. ``"gender"``),
        ``value`` (e.g. ``"female"``), ``n`` (test rows) and ``ece``.
    max_auroc_drop : float
        Largest allowed ``champion AUROC - candidate AUROC``.
    max_ece : float
        Largest allowed overall ECE of the candidate.
    subgroup_min_n : int
        Subgroups with fewer test rows are too small to judge and are not checked.
    max_subgroup_ece : float
        Largest allowed ECE in any judged subgroup.
    bands : pandas.DataFrame, optional
        The candidate's landmark bands (``ModelEvaluation.band_table``): ``landmark`` (e.g.
        ``"1-3"``), ``n_clients``, ``events``, ``ece``, ``calibration_intercept`` (CITL) and
        its 95% interval ``citl_ci_low``/``citl_ci_high``. Without it the band check is left
        out.
    band_min_events, band_citl_target
        Bands with fewer dropout rows are not judged; a judged band fails when its whole CITL
        interval lies outside +-``band_citl_target`` (issue 19's target, 0.1). A point
        threshold refuses calibrated models by chance: 200 clients x 4 rows at a dropout rate
        of 0.09 have |CITL| > 0.25 in 31% of perfectly calibrated draws.

    Returns
    -------
    GateResult
        Checks ``auroc_drop``, ``ece``, ``subgroup_ece`` and (with ``bands``)
        ``landmark_band_calibration``, in that order. A NaN metric fails its check.
    """
    checks = (
        _auroc_check(candidate, champion, max_auroc_drop),
        _ece_check(candidate, max_ece),
        _subgroup_check(subgroups, subgroup_min_n, max_subgroup_ece),
    )
    if bands is not None:
        checks += (_band_check(bands, band_min_events, band_citl_target),)
    return GateResult(passed=all(c.passed for c in checks), checks=checks)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        # No login name and no passwd entry, as in some containers.
        return "unknown"


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version holding the ``champion`` alias, or ``None`` (no alias or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = registered.aliases.get(CHAMPION_ALIAS)
    if version is None:
        return None
    return client.get_model_version(name, str(version))


def resolve_version(client: MlflowClient, name: str, version: str | int | None) -> ModelVersion:
    """Version ``version`` of model ``name``; ``None`` means the highest version number.

    Raises
    ------
    LookupError
        When ``version`` is ``None`` and the model has no versions.
    mlflow.exceptions.MlflowException
        When the model or the given version does not exist.
    """
    if version is not None:
        return client.get_model_version(name, str(version))
    if "'" in name:
        raise ValueError("registered model names containing a single quote are not supported")
    found = client.search_model_versions(
        f"name = '{name}'", max_results=1, order_by=["version_number DESC"]
    )
    if not found:
        raise LookupError(f"registered model {name!r} has no versions")
    return found[0]


def _refuse(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    actor: str,
    at: str,
    previous: str | None,
    message: str,
    failed: tuple[GateCheck, ...],
    evidence: Mapping[str, str],
) -> PromotionResult:
    for key, value in evidence.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_model_version_tag(name, version, TAG_REFUSED_AT, at)
    client.set_model_version_tag(name, version, TAG_REFUSED_BY, actor)
    client.set_model_version_tag(
        name, version, TAG_FAILED_CHECKS, json.dumps([c.as_dict() for c in failed], sort_keys=True)
    )
    logger.info("promotion of %s version %s refused: %s", name, version, message)
    return PromotionResult(name, version, False, False, previous, actor, at, message, failed)


def promote(
    client: MlflowClient,
    name: str,
    version: str | int,
    *,
    gate: GateResult | None,
    force: bool = False,
    reason: str | None = None,
    actor: str | None = None,
    evidence: Mapping[str, str] | None = None,
) -> PromotionResult:
    """Move the ``champion`` alias of ``name`` to ``version`` if the gates allow it.

    The alias moves when ``gate.passed``, or when ``force`` is set with a non-empty ``reason``.
    The decision is recorded in the version's tags (see the module docstring); the audit tags
    are written before the alias moves, so a moved alias always has its record. A refused
    promotion raises nothing: the result has ``promoted=False`` and says why, and the CLI exits
    non-zero on it.

    Parameters
    ----------
    client : MlflowClient
        Client of the registry to change.
    name, version : str
        Registered model name and the candidate version (must exist).
    gate : GateResult or None
        :func:`evaluate_gates` of the candidate; ``None`` only makes sense with ``force``.
    force : bool
        Promote even though the gates failed or were not evaluated; needs ``reason``.
    reason : str, optional
        Why; required with ``force``, recorded whenever given.
    actor : str, optional
        Who; defaults to the OS user.
    evidence : mapping of str to str, optional
        Further tags recorded with the decision, promoted or refused (``promotion.shadow``).

    Raises
    ------
    ValueError
        ``force`` without a non-empty ``reason``.
    mlflow.exceptions.MlflowException
        The model or version does not exist.
    """
    reason = (reason or "").strip() or None
    if force and reason is None:
        raise ValueError("a forced promotion needs a non-empty reason")
    version = str(version)
    client.get_model_version(name, version)
    actor = actor or _os_user()
    at = datetime.now(UTC).isoformat(timespec="seconds")
    current = champion(client, name)
    previous = str(current.version) if current is not None else None

    if previous == version:
        message = f"version {version} is already the champion; nothing changed"
        return PromotionResult(name, version, True, False, previous, actor, at, message)

    gates_passed = gate is not None and gate.passed
    if not gates_passed and not force:
        failed = gate.failed if gate is not None else ()
        if gate is None:
            message = "no gate evaluation given; promote only after gates, or force with a reason"
        else:
            message = "gates failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
        return _refuse(
            client,
            name,
            version,
            actor=actor,
            at=at,
            previous=previous,
            message=message,
            failed=failed,
            evidence=evidence or {},
        )

    forced = not gates_passed
    tags = {
        TAG_GATES: gate.to_json() if gate is not None else "null",
        TAG_FORCED: "true" if forced else "false",
        TAG_ACTOR: actor,
        TAG_AT: at,
        TAG_PREVIOUS: previous or "",
    }
    if reason is not None:
        tags[TAG_REASON] = reason
    tags.update(evidence or {})
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    how = "forced past failing gates" if forced else "gates passed"
    message = f"version {version} is now the champion ({how}); previous: {previous or 'none'}"
    logger.info("promoted %s version %s (%s)", name, version, how)
    failed = gate.failed if gate is not None else ()
    return PromotionResult(name, version, True, forced, previous, actor, at, message, failed)
