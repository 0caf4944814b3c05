"""The scores of one call to :meth:`models.scorer.Scorer.score`, and the result objects made
from them.

A :class:`ScoreSet` keeps the scored rows as arrays (what evaluation and monitoring read) and
makes the frozen :class:`~models.results.RiskScore` objects every edge serialises, one per
scored (episode, landmark) row, with drivers in clinician language. Episodes the contract
refused carry their :class:`~models.results.ContractProblem` list instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from features.arrays import SessionArrays
from features.episodes import Episodes
from models.explain import Explanation
from models.results import (
    ContractProblem,
    Driver,
    FeatureContribution,
    GroupContribution,
    RiskExplanation,
    RiskScore,
)

if TYPE_CHECKING:
    from models.scorer import Scorer

#: Per-feature contributions kept in each result, for audit.
TOP_FEATURES = 10
#: Drivers in clinician language per result.
TOP_DRIVERS = 3


@dataclass(frozen=True, eq=False)
class ScoreSet:
    """Scored rows of some episodes, and why the others were not scored.

    Attributes
    ----------
    scorer : Scorer
        The model that scored them.
    episodes : Episodes
        The input.
    problems : dict of int to tuple of ContractProblem
        Episode position -> the rules it broke (those episodes have no rows).
    episode, landmark : ndarray of shape (n_rows,)
        Which episode (position in ``episodes``) and which appointment number each row is.
    features : ndarray of shape (n_rows, n_features)
        The model inputs, registry column order (NaN = undefined by design).
    explanation : Explanation
        Probability, base and signed contributions (``explanation.space``).
    risk_band : ndarray of shape (n_rows,)
        ``low`` / ``moderate`` / ``high``.
    arrays, rows
        The packed histories and each row's landmark position in them (what the drivers read).
    scored_at : datetime
        When the rows were scored (UTC).
    explained : bool
        False when scored with ``explain=False``: ``explanation`` then holds the probabilities
        only (no contributions), and :attr:`drivers` and :attr:`results` raise ValueError.
    """

    scorer: Scorer
    episodes: Episodes
    problems: dict[int, tuple[ContractProblem, ...]]
    episode: np.ndarray
    landmark: np.ndarray
    features: np.ndarray
    explanation: Explanation
    risk_band: np.ndarray
    arrays: SessionArrays
    rows: np.ndarray
    scored_at: datetime
    explained: bool = True

    @property
    def n_rows(self) -> int:
        return int(self.landmark.shape[0])

    @property
    def probability(self) -> np.ndarray:
        """``(n_rows,)`` calibrated probabilities of dropout."""
        return self.explanation.probability

    @cached_property
    def drivers(self) -> list[list[Driver]]:
        """Per row, up to :data:`TOP_DRIVERS` drivers, largest |contribution| first."""
        self._require_explanation()
        return self.scorer.drivers.describe(
            self.arrays, self.rows, self.features, self.explanation, top=TOP_DRIVERS
        )

    @cached_property
    def results(self) -> tuple[RiskScore, ...]:
        """One :class:`RiskScore` per row, in row order (episode order, then landmark)."""
        self._require_explanation()
        e, names = self.explanation, self.scorer.names
        n = self.n_rows
        k = min(TOP_FEATURES, e.feature_contributions.shape[1])
        top = np.argsort(-np.abs(e.feature_contributions), axis=1, kind="stable")[:, :k]
        at = np.arange(n)[:, None]
        top_values = self.features[at, top]
        top_values = np.where(np.isfinite(top_values), top_values, np.nan).tolist()
        top_contributions = e.feature_contributions[at, top].tolist()
        top_names = names.feature_array[top].tolist()
        top_groups = names.feature_group_array[top].tolist()
        groups = e.group_contributions.tolist()
        ids = self.episodes
        out = []
        for i, (ep, landmark, p, band, base, base_p, output, drivers) in enumerate(
            zip(
                self.episode.tolist(),
                self.landmark.tolist(),
                e.probability.tolist(),
                self.risk_band.tolist(),
                e.base_logit.tolist(),
                e.base_probability.tolist(),
                e.logit.tolist(),
                self.drivers,
                strict=True,
            )  # fmt: skip
        ):
            explanation = RiskExplanation(
                space=e.space,
                base_value=base,
                base_probability=base_p,
                output_value=output,
                contributions=tuple(
                    map(GroupContribution, names.groups, names.group_labels, groups[i])
                ),
                drivers=tuple(drivers),
                features=tuple(
                    FeatureContribution(f, g, None if v != v else v, c)  # NaN -> None
                    for f, g, v, c in zip(
                        top_names[i],
                        top_groups[i],
                        top_values[i],
                        top_contributions[i],
                        strict=True,
                    )  # fmt: skip
                ),
            )
            out.append(
                RiskScore(
                    client_id=ids.client_id[ep],
                    clinic_id=ids.clinic_id[ep],
                    therapist_id=ids.therapist_id[ep],
                    landmark=landmark,
                    probability=p,
                    risk_band=band,
                    scored_at=self.scored_at,
                    explanation=explanation,
                )
            )
        return tuple(out)

    def _require_explanation(self) -> None:
        if not self.explained:
            raise ValueError("scored with explain=False: probabilities and bands only")

    def by_episode(self) -> Iterator[tuple[int, RiskScore | tuple[ContractProblem, ...] | None]]:
        """Per input episode, in order: its score (the last scored row of the episode), the
        problems that refused it, or None when it has no row at the requested landmark."""
        # Rows come in episode order, then landmark order: an episode's score is its run's last.
        ends = np.flatnonzero(np.r_[self.episode[1:] != self.episode[:-1], True])
        last = np.full(self.episodes.n_episodes, -1, dtype=np.int64)
        if self.n_rows:
            last[self.episode[ends]] = ends
        results = self.results
        for i, row in enumerate(last.tolist()):
            if i in self.problems:
                yield i, self.problems[i]
            else:
                yield i, results[row] if row >= 0 else None
