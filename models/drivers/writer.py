"""The driver writer: per scored row, the top groups by |contribution|, each with its sentence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.arrays import SessionArrays
from features.registry import FeatureRegistry
from models.drivers.facts import pair_facts
from models.drivers.sentences import write
from models.drivers.tables import Tables
from models.explain import Explanation
from models.results import LOWERS, RAISES, Driver

#: Focus for the overall alliance when no element has been rated yet: asking for feedback is
#: how ratings (and ruptures) become visible at all.
GENERAL_FOCUS = (
    "Keep communication open and transparent: ask for feedback on the session and "
    "name any strain directly."
)
#: Same-signed features of a driver whose sentences are tried before the group's defaults.
CANDIDATES = 4


@dataclass(frozen=True, eq=False)
class DriverWriter:
    """Writes the drivers of one model's scores; build it once per model with :meth:`build`.

    Attributes
    ----------
    registry : FeatureRegistry
        The model's feature registry.
    group_names : tuple of str
        The explanation groups, in the explanation's order.
    tables : Tables
        Group descriptions and column lookups (:mod:`models.drivers.tables`).
    """

    registry: FeatureRegistry
    group_names: tuple[str, ...]
    tables: Tables

    @classmethod
    def build(cls, registry: FeatureRegistry, group_names: tuple[str, ...]) -> DriverWriter:
        """The writer of a model with feature ``registry`` explained by ``group_names``.

        Raises
        ------
        ValueError
            If a group is not in the registry.
        """
        return cls(registry, tuple(group_names), Tables.build(registry, tuple(group_names)))

    def describe(
        self,
        arrays: SessionArrays,
        rows: np.ndarray,
        X: np.ndarray,
        explanation: Explanation,
        *,
        top: int = 3,
    ) -> list[list[Driver]]:
        """The top reasons behind each scored row's risk, in clinician language.

        Parameters
        ----------
        arrays : SessionArrays
            The session histories the rows were scored from; profile of the registry.
        rows : ndarray of int, shape (n_rows,)
            Landmark row of each scored row in ``arrays`` (as :func:`features.build.
            landmark_rows` returns them).
        X : ndarray of shape (n_rows, n_features)
            The feature rows that were scored, in registry column order.
        explanation : Explanation
            The explanation of the same rows, over the registry's features and this writer's
            groups.
        top : int, default 3
            Most drivers per row.

        Returns
        -------
        list of list of Driver
            Per scored row, up to ``top`` drivers ordered by decreasing |group contribution|
            (ties keep group order). Groups contributing exactly 0 (or NaN) are left out.

        Raises
        ------
        ValueError
            On mismatched shapes, features, groups or profiles, a row outside ``arrays`` or a
            negative ``top``.
        """
        registry = self.registry
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        X = np.asarray(X, dtype=np.float64)
        n = rows.shape[0]
        if top < 0:
            raise ValueError("top must be >= 0")
        if X.ndim != 2 or X.shape != (n, len(registry.names)) or explanation.n_rows != n:
            raise ValueError(
                "rows, X and the explanation must describe the same rows, X with one column per "
                "registry feature"
            )
        if explanation.feature_names != registry.names:
            raise ValueError("the explanation's features differ from the registry's")
        if explanation.group_names != self.group_names:
            raise ValueError("the explanation's groups differ from the driver writer's")
        if arrays.profile is not registry.profile and arrays.profile != registry.profile:
            raise ValueError(
                "the session arrays and the registry use different instrument profiles"
            )
        if n and (rows.min() < 0 or rows.max() >= arrays.n_rows):
            raise ValueError("rows must be row positions inside the session arrays")
        out: list[list[Driver]] = [[] for _ in range(n)]
        if n == 0 or top == 0:
            return out

        # The top groups of each row (stable: ties keep group order), in row-major order.
        gc = explanation.group_contributions
        order = np.argsort(-np.abs(gc), axis=1, kind="stable")[:, :top]
        contrib = gc[np.arange(n)[:, None], order]
        pair_row, pair_rank = np.nonzero((contrib != 0) & np.isfinite(contrib))
        pair_group = order[pair_row, pair_rank]
        pair_c = contrib[pair_row, pair_rank]

        # Per driver: the group's features pushing the same way, strongest first (stable: ties
        # in column order); the padding after a group's columns never counts.
        t = self.tables
        signed = explanation.feature_contributions[pair_row[:, None], t.group_cols[pair_group]]
        signed *= np.where(pair_c > 0, 1.0, -1.0)[:, None]
        signed[~(signed > 0) | t.group_pad[pair_group]] = -np.inf
        best = np.argsort(-signed, axis=1, kind="stable")[:, :CANDIDATES]
        n_best = np.minimum((signed > 0).sum(axis=1), CANDIDATES)

        facts = pair_facts(arrays, rows, X, pair_row, pair_group, t)
        elements = registry.profile.elements
        for i, gi, c, cands, k, f in zip(
            pair_row.tolist(),
            pair_group.tolist(),
            pair_c.tolist(),
            best.tolist(),
            n_best.tolist(),
            facts,
            strict=True,
        ):
            g = t.groups[gi]
            up = c > 0
            text, evidence = write(f, g, up, cands[:k], c)
            focus = g.focus
            if g.kind == "overall":
                el = f.focus_el
                focus = elements[el].focus if el >= 0 else GENERAL_FOCUS
            out[i].append(
                Driver(
                    group=g.name,
                    label=g.label,
                    contribution=c,
                    direction=RAISES if up else LOWERS,
                    text=text,
                    evidence=evidence,
                    focus=focus,
                )
            )
        return out
