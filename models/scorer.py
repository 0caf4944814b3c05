"""The scorer: the one inference path from episodes of care to calibrated, explained risk.

:meth:`Scorer.score` takes :class:`~features.episodes.Episodes` (client fields and appointments,
from a file or a request), checks the data contract's rules, computes the landmark features,
the calibrated probability, the risk band and the exact grouped explanation, and describes the
drivers in clinician language. The HTTP routes, ``alliance-risk score``, evaluation and every
later adapter (FHIR, CDS Hooks) call it; nothing else checks episodes for a model, builds its
features or applies its calibration. Per-model tables (TreeSHAP, explanation groups, driver
tables, response strings) are built once, when the scorer is.

A scorer is saved as a directory of plain files, never a pickle of library objects:

- ``booster.ubj``: the trimmed XGBoost booster (its own portable binary format);
- ``scorer.json``: the feature registry (with the full instrument profile), the calibration
  map, the risk-band thresholds, the landmark cap, free-form metadata, and the library
  versions it was built with (checked on load);
- ``reference.json`` (optional): the reference profile (:mod:`models.reference`), the training
  distribution monitoring compares with and the clinics' typical levels the what-if reads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import xgboost as xgb

from features import contract
from features.build import Landmarks, landmark_rows
from features.episodes import Episodes
from features.kernels import compute_feature_matrix
from features.profiles import InstrumentProfile
from features.registry import FeatureRegistry
from features.validation import NO_SESSIONS, contract_violations, empty_episodes
from models.booster import margin
from models.calibration import calibrate_probability, landmark_column
from models.drivers import DriverWriter, group_label
from models.explain import Explanation, Grouping, explain
from models.reference import ReferenceProfile
from models.results import ContractProblem
from models.scoreset import ScoreSet
from models.treeshap import PathTables, UnsupportedBooster

logger = logging.getLogger(__name__)

SCORER_FORMAT = "alliance-risk/scorer"
SCORER_FORMAT_VERSION = 1
BOOSTER_FILE = "booster.ubj"
SCORER_FILE = "scorer.json"
MODEL_CARD_FILE = "model_card.md"
REFERENCE_FILE = "reference.json"

LOW, MODERATE, HIGH = "low", "moderate", "high"
BAND_LABELS = (LOW, MODERATE, HIGH)


class IncompatibleModelError(ValueError):
    """A saved scorer cannot be used by this code (format, versions or feature columns differ)."""


class SelfCheckError(RuntimeError):
    """A loaded scorer produced invalid output on its own input example."""


#: How the high band's threshold is chosen (:class:`HighBandRule`).
ALERT_RATE, NET_BENEFIT = "alert_rate", "net_benefit"


@dataclass(frozen=True)
class HighBandRule:
    """How the high band's threshold is set on the calibration split.

    - ``alert_rate``: ``value`` is the share of landmark rows that are ``high`` (e.g. 0.10:
      the top 10%), whatever their risk;
    - ``net_benefit``: ``value`` is the threshold probability pt at which acting maximises net
      benefit (Vickers & Elkin 2006): a calibrated model should alert at ``p >= pt``. pt states
      the harm ratio: an unneeded check-in costs pt / (1 - pt) of a missed dropout, so at 0.25
      one missed dropout weighs as much as three unneeded check-ins.

    Written ``alert-rate:0.10`` or ``net-benefit:0.25`` (:meth:`parse`, ``str``).
    """

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in (ALERT_RATE, NET_BENEFIT):
            raise ValueError("the high-band rule is alert-rate or net-benefit")
        if not 0.0 < self.value < 1.0:
            raise ValueError("the high-band rule's value must lie strictly between 0 and 1")

    @classmethod
    def parse(cls, text: str) -> HighBandRule:
        """``alert-rate:0.10`` or ``net-benefit:0.25`` (underscores accepted too)."""
        kind, sep, value = text.strip().partition(":")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or number != number:
            raise ValueError(
                "write the high-band rule as alert-rate:SHARE or net-benefit:THRESHOLD, "
                "e.g. alert-rate:0.10"
            )
        return cls(kind.strip().lower().replace("-", "_"), number)

    def __str__(self) -> str:
        return f"{self.kind.replace('_', '-')}:{self.value:g}"


@dataclass(frozen=True)
class RiskBands:
    """Probability thresholds of the ``low`` / ``moderate`` / ``high`` risk bands.

    ``low`` is below ``moderate_from``; ``high`` is at or above ``high_from``.
    ``moderate_from`` is the mean calibrated risk (the base rate: a client in ``low`` is at
    below-average risk). ``high_from`` follows ``rule`` (:class:`HighBandRule`): by default so
    that ``high_share`` of landmarks are ``high`` (the top-10% operating point whose sensitivity
    and PPV the model card reports), or at ``threshold_probability`` (net benefit).
    ``high_share`` is always the share of calibration rows in ``high``. Saved models from before
    the rule was stored load as ``alert_rate``.
    """

    moderate_from: float
    high_from: float
    high_share: float = 0.10
    rule: str = ALERT_RATE
    threshold_probability: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.moderate_from <= self.high_from <= 1.0:
            raise ValueError("risk bands need 0 <= moderate_from <= high_from <= 1")
        if self.rule not in (ALERT_RATE, NET_BENEFIT):
            raise ValueError("unknown high-band rule")
        if self.rule == NET_BENEFIT and self.threshold_probability is None:
            raise ValueError("a net-benefit high band needs its threshold_probability")

    @classmethod
    def from_probabilities(
        cls,
        probability: np.ndarray,
        *,
        high_share: float = 0.10,
        rule: HighBandRule | None = None,
        weight: np.ndarray | None = None,
    ) -> RiskBands:
        """Bands from calibrated probabilities on held-out rows (the calibration split).

        ``rule`` (default: ``alert_rate`` at ``high_share``) sets the high band's threshold.
        ``weight`` (one per row, e.g. the training run's censoring weights) weights the mean,
        the quantile (inverted CDF) and the share, so the bands stand for every intake.
        """
        p = np.asarray(probability, dtype=np.float64)
        if p.ndim != 1:
            # A (n, 2) predict_proba array would silently give bands at 0.5 and ~0.9.
            raise ValueError("risk bands need a 1-D array: the probability of dropout per row")
        if p.size == 0 or not np.isfinite(p).all():
            raise ValueError("risk bands need a non-empty array of finite probabilities")
        w = None if weight is None else np.asarray(weight, dtype=np.float64)
        if w is not None and (w.shape != p.shape or not (np.isfinite(w) & (w >= 0)).all()):
            raise ValueError("risk band weights must be finite, >= 0 and one per row")
        rule = rule or HighBandRule(ALERT_RATE, high_share)
        mean = float(np.average(p, weights=w))
        if rule.kind == NET_BENEFIT:
            high = rule.value
            return cls(
                moderate_from=min(mean, high),
                high_from=high,
                high_share=float(np.average(p >= high, weights=w)),
                rule=NET_BENEFIT,
                threshold_probability=high,
            )
        if w is None:
            high = float(np.quantile(p, 1.0 - rule.value))
        else:
            high = float(np.quantile(p, 1.0 - rule.value, weights=w, method="inverted_cdf"))
        return cls(moderate_from=min(mean, high), high_from=high, high_share=rule.value)

    def assign(self, probability: np.ndarray) -> np.ndarray:
        """Band label per probability, an object array of ``low``/``moderate``/``high``."""
        p = np.asarray(probability, dtype=np.float64)
        idx = (p >= self.moderate_from).astype(np.int8) + (p >= self.high_from).astype(np.int8)
        return np.asarray(BAND_LABELS, dtype=object)[idx]

    def to_dict(self) -> dict[str, float | str]:
        """JSON form (``scorer.json``'s ``bands``); ``threshold_probability`` only when set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, eq=False)
class ModelStrings:
    """Names and labels every result of one model repeats, made once per model."""

    groups: tuple[str, ...]  # explanation groups, in output order
    group_labels: tuple[str, ...]  # their clinician names
    feature_array: np.ndarray  # feature names (object array, for fancy indexing)
    feature_group_array: np.ndarray  # each feature's group (object array)

    @classmethod
    def build(cls, registry: FeatureRegistry, groups: tuple[str, ...]) -> ModelStrings:
        return cls(
            groups=groups,
            group_labels=tuple(group_label(registry.profile, g) for g in groups),
            feature_array=np.asarray(registry.names, dtype=object),
            feature_group_array=np.asarray([f.group for f in registry.features], dtype=object),
        )


def _library_versions() -> dict[str, str]:
    return {
        "xgboost": xgb.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


def _path_tables(booster: xgb.Booster) -> PathTables | None:
    """TreeSHAP tables for ``booster``, checked against ``pred_contribs``; None (xgboost then
    explains) when the model is not supported or the check fails."""
    try:
        tables = PathTables.from_booster(booster)
        tables.check_against(booster)
    except UnsupportedBooster as exc:
        logger.warning("TreeSHAP by xgboost's pred_contribs (tables not used: %s)", exc)
        return None
    return tables


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


@dataclass(eq=False)
class Scorer:
    """Turns session histories into calibrated, explained dropout risk.

    Parameters
    ----------
    booster : xgboost.Booster
        Trimmed booster predicting the margin; its feature names must equal ``registry.names``.
    calibrator : mapping
        :meth:`models.calibration.MarginCalibrator.to_dict` output.
    registry : FeatureRegistry
        Feature columns, their groups and the instrument profile.
    bands : RiskBands
        Risk-band thresholds.
    k_max : int
        Landmark cap used in training (later landmarks are still scored, see the model card).
    metadata : mapping
        JSON-able facts about the model (trained_at, metrics, data fingerprint, ...).
    model_card : str, optional
        The model card (Markdown), shipped with the model so the API can show it.
    reference : ReferenceProfile, optional
        The training reference profile (:mod:`models.reference`); None for models trained
        before it existed.
    """

    booster: xgb.Booster
    calibrator: Mapping[str, Any]
    registry: FeatureRegistry
    bands: RiskBands
    k_max: int = 20
    metadata: Mapping[str, Any] = field(default_factory=dict)
    model_card: str | None = None
    reference: ReferenceProfile | None = None
    #: Built from the fields when the scorer is: the strings every result repeats, and the
    #: tables that describe drivers.
    names: ModelStrings = field(init=False, repr=False)
    drivers: DriverWriter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = self.booster.feature_names
        if names is not None and tuple(names) != self.registry.names:
            raise IncompatibleModelError(
                "the booster's feature columns differ from the feature registry's"
            )
        # Serving runs one OpenMP thread per process (perf-notes: oversubscription costs 10x).
        self.booster.set_param({"nthread": 1})
        # Checked once here, so explaining a row needs neither the group check nor the
        # booster's names again (both cost more than the TreeSHAP of a small model).
        self._grouping = Grouping.build(self.registry.index_of_group, self.registry.names)
        self._tables = _path_tables(self.booster)
        # The calibrator's landmark intercepts read this feature column (None: no such terms).
        self._landmark_column = landmark_column(self.calibrator, self.registry.names)
        self.names = ModelStrings.build(self.registry, self._grouping.group_names)
        self.drivers = DriverWriter.build(self.registry, self._grouping.group_names)

    @property
    def profile(self) -> InstrumentProfile:
        return self.registry.profile

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.registry.names

    # -- scoring ---------------------------------------------------------------------------------

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probabilities only, without explanations, for feature rows in registry
        order (the logged MLflow model scores raw episodes through :meth:`score` instead).

        Equal to ``explain_matrix(X).probability`` to float64 rounding: with TreeSHAP tables the
        margin is the same sum of contributions the explanation adds up (xgboost's own margin
        differs from it in the 7th digit, which a steep isotonic step can turn into 2e-5 of
        probability); without them it is xgboost's margin and TreeSHAP is skipped.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if self._tables is None:
            m = margin(self.booster, X)
        else:
            phi, bias = self._tables.contributions(X)
            m = bias + phi.sum(axis=1)
        return calibrate_probability(m, self.calibrator, self._landmark(X))

    def _landmark(self, X: np.ndarray) -> np.ndarray | None:
        """Each row's landmark for the calibrator's landmark intercepts (None if it has none)."""
        return None if self._landmark_column is None else X[:, self._landmark_column]

    def explain_matrix(self, X: np.ndarray) -> Explanation:
        """Calibrated probability and grouped explanation for feature rows in registry order."""
        return explain(
            self.booster,
            self.calibrator,
            X,
            feature_names=self._grouping.feature_names,
            groups=self._grouping,
            check_booster_names=False,
            tables=self._tables,
        )

    def score(
        self,
        episodes: Episodes,
        *,
        landmarks: Landmarks = "latest",
        scored_at: datetime | None = None,
        explain: bool = True,
    ) -> ScoreSet:
        """Check, score and explain episodes: the one inference entry.

        Parameters
        ----------
        episodes : Episodes
            Client fields and appointments, on this model's instrument profile.
        landmarks : {"latest", "all", "training"} or int, default "latest"
            Which appointments to score each episode at (:func:`features.build.landmark_rows`):
            its latest, every one up to the model's ``k_max``, those of open episodes
            (evaluation), or the appointment numbered ``k``.
        scored_at : datetime, optional
            Time stamp of the results; default now (UTC).
        explain : bool, default True
            False skips the explanation (TreeSHAP) and the drivers: the set carries the
            probabilities and bands only (the shadow challenger and the live drift windows,
            which never answer a caller). The probability is then the calibrated xgboost margin
            (:meth:`predict_proba`'s formula without tables), equal to the explained one to
            float32 rounding of the margin; ``results`` and ``drivers`` refuse such a set.

        Returns
        -------
        ScoreSet
            The scored rows (arrays and :class:`~models.results.RiskScore` objects) and, per
            refused episode, the rules it broke. An episode with no appointment at the
            requested landmark has no row and no problem.

        Raises
        ------
        IncompatibleModelError
            The episodes use another instrument profile than the model.
        """
        if episodes.profile != self.profile:
            raise IncompatibleModelError(
                f"the episodes use the {episodes.profile.name!r} instrument profile; "
                f"this model was trained on {self.profile.name!r}"
            )
        problems = _problems_by_episode(episodes)
        scorable = np.ones(episodes.n_episodes, dtype=bool)
        scorable[list(problems)] = False
        ok = np.flatnonzero(scorable)
        arrays = episodes.pack(ok)
        rows = landmark_rows(arrays, landmarks, self.k_max)
        X = compute_feature_matrix(arrays, self.registry, rows)
        e = self.explain_matrix(X) if explain else self._unexplained(X)
        return ScoreSet(
            scorer=self,
            episodes=episodes,
            problems=problems,
            episode=ok[arrays.client_rank[arrays.seg_of_row[rows]]],
            landmark=arrays.session_number[rows],
            features=X,
            explanation=e,
            risk_band=self.bands.assign(e.probability),
            arrays=arrays,
            rows=rows,
            scored_at=scored_at or datetime.now(UTC),
            explained=explain,
        )

    def _unexplained(self, X: np.ndarray) -> Explanation:
        """Probability from the booster's margin, with no contributions (``explain=False``)."""
        m = margin(self.booster, X)
        probability = calibrate_probability(m, self.calibrator, self._landmark(X))
        empty = np.empty((X.shape[0], 0))
        return Explanation(
            space="none (scored without explanation)",
            base_logit=np.full(X.shape[0], np.nan),
            base_probability=np.full(X.shape[0], np.nan),
            feature_contributions=empty,
            group_contributions=empty.copy(),
            feature_names=(),
            group_names=(),
            logit=np.asarray(m, dtype=np.float64),
            probability=np.asarray(probability, dtype=np.float64),
        )

    def self_check(self) -> ScoreSet:
        """Score a synthetic episode (no real client) end to end and verify the output; raise
        :class:`SelfCheckError` if it is invalid.

        Checks: one result; probability finite and in [0, 1]; the explanation adds up (base plus
        group contributions equals the output in its space, to 1e-6); group sums equal feature
        sums; drivers in clinician language.
        """
        scored = self.score(_synthetic_episode(self.profile))
        e = scored.explanation
        p = e.probability
        if scored.n_rows != 1:
            raise SelfCheckError("the synthetic episode was not scored")
        if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
            raise SelfCheckError("probabilities are not finite values in [0, 1]")
        if not np.allclose(e.base_logit + e.group_contributions.sum(1), e.logit, atol=1e-6):
            raise SelfCheckError("explanation does not add up to the model output")
        if not np.allclose(e.group_contributions.sum(1), e.feature_contributions.sum(1), atol=1e-6):
            raise SelfCheckError("group contributions do not add up to feature contributions")
        (result,) = scored.results
        if not result.explanation.drivers or not all(d.text for d in result.explanation.drivers):
            raise SelfCheckError("no driver could be described")
        return scored

    # -- persistence -----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``booster.ubj`` and ``scorer.json`` into ``directory`` (created if needed)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(out / BOOSTER_FILE)
        doc = {
            "format": SCORER_FORMAT,
            "format_version": SCORER_FORMAT_VERSION,
            "libraries": _library_versions(),
            "registry": self.registry.to_dict(),
            "calibrator": dict(self.calibrator),
            "bands": self.bands.to_dict(),
            "k_max": self.k_max,
            "metadata": dict(self.metadata),
        }
        (out / SCORER_FILE).write_text(json.dumps(doc, indent=2, allow_nan=False))
        if self.model_card is not None:
            (out / MODEL_CARD_FILE).write_text(self.model_card)
        if self.reference is not None:
            (out / REFERENCE_FILE).write_text(
                json.dumps(self.reference.to_dict(), indent=1, allow_nan=False)
            )
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Scorer:
        """Read a scorer saved by :meth:`save`.

        Raises
        ------
        IncompatibleModelError
            Unknown format, a different xgboost minor version, mismatched feature columns, or
            an unreadable reference profile.
        """
        src = Path(directory)
        try:
            doc = json.loads((src / SCORER_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise IncompatibleModelError(f"{SCORER_FILE} is missing or not JSON") from exc
        if doc.get("format") != SCORER_FORMAT or doc.get("format_version") != SCORER_FORMAT_VERSION:
            raise IncompatibleModelError("not an alliance-risk scorer of a supported format")
        saved = doc.get("libraries", {}).get("xgboost", "")
        if _minor(saved) != _minor(xgb.__version__):
            raise IncompatibleModelError(
                f"model saved with xgboost {saved or 'unknown'}; this environment has "
                f"{xgb.__version__} (retrain or install the pinned version)"
            )
        booster = xgb.Booster()
        try:
            booster.load_model(src / BOOSTER_FILE)
        except xgb.core.XGBoostError as exc:
            raise IncompatibleModelError(f"{BOOSTER_FILE} cannot be read") from exc
        try:
            registry = FeatureRegistry.from_dict(doc["registry"])
            bands = RiskBands(**doc["bands"])
            calibrator = doc["calibrator"]
            if calibrator.get("method") not in ("sigmoid", "isotonic"):
                raise ValueError("unknown calibration method")
        except (KeyError, TypeError, ValueError) as exc:
            raise IncompatibleModelError(f"{SCORER_FILE} is incomplete: {exc}") from exc
        card = src / MODEL_CARD_FILE
        reference = None
        if (src / REFERENCE_FILE).is_file():
            try:
                reference = ReferenceProfile.from_dict(
                    json.loads((src / REFERENCE_FILE).read_text())
                )
            except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise IncompatibleModelError(f"{REFERENCE_FILE} is unreadable: {exc}") from exc
        return cls(
            booster=booster,
            calibrator=calibrator,
            registry=registry,
            bands=bands,
            k_max=int(doc.get("k_max", 20)),
            metadata=doc.get("metadata", {}),
            model_card=card.read_text() if card.is_file() else None,
            reference=reference,
        )


def _problems_by_episode(episodes: Episodes) -> dict[int, tuple[ContractProblem, ...]]:
    """The contract problems of each refused episode (position -> problems in rule order)."""
    found: dict[int, list[ContractProblem]] = {}
    for v in contract_violations(episodes):
        for appointment, ep in zip(
            v.appointments.tolist(), episodes.episode[v.appointments].tolist(), strict=True
        ):
            if ep >= 0:
                found.setdefault(ep, []).append(ContractProblem(appointment, v.column, v.reason))
    for ep in np.flatnonzero(empty_episodes(episodes)).tolist():
        found.setdefault(ep, []).append(ContractProblem(None, "sessions", NO_SESSIONS))
    return {ep: tuple(found[ep]) for ep in sorted(found)}


def _synthetic_episode(profile: InstrumentProfile) -> Episodes:
    """Six weekly appointments on ``profile``'s scale, falling ratings and two no-shows."""
    n = 6
    level = profile.scale_min + profile.scale_range * np.array(
        [0.85, 0.8, np.nan, 0.7, 0.6, np.nan]
    )
    codes = ["attended", "attended", "no_show", "attended", "attended", "no_show"]
    start = float(np.datetime64("2026-01-05", "D").astype(np.int64))
    return Episodes.from_columns(
        profile,
        client_id=["self-check"],
        clinic_id=[None],
        therapist_id=[None],
        intake_day=[start - 4],
        age=[30.0],
        episode=np.zeros(n),
        session_number=np.arange(1, n + 1),
        day=start + 7 * np.arange(n),
        attendance=[contract.ATTENDANCE_CODES.index(code) for code in codes],
        ratings=np.tile(level, (len(profile.elements), 1)),
    )
