"""Exact TreeSHAP of a small tree ensemble as table lookups, for one-row serving latency.

xgboost's ``pred_contribs`` computes exact path-dependent TreeSHAP (Lundberg et al. 2020,
"From local explanations to global understanding with explainable AI for trees", Algorithm 2)
in O(leaves x depth^2) per tree and row; for one row, almost all of its time is the 1-row
``DMatrix`` and the call itself. The values depend on a row only through a few bits per leaf
(below), so they are tabulated once per model, when it loads. Explaining rows is then a fixed
sequence of whole-array numpy operations and one sparse sum (scipy), the same code for one row
and for a batch; batches go through it in chunks of rows, which bounds the working memory.

Why tables work. Take a leaf with value ``v`` whose path from the root splits on the distinct
features ``F`` (``d = |F|``). For feature ``j`` in ``F`` let ``z_j`` be the product of the cover
fractions of the path's branches at splits on ``j`` (the share of training rows that went that
way), and ``o_j`` be 1 if the row follows the path at every split on ``j``, else 0. The leaf
adds to the contribution of ``i`` in ``F``::

    phi_i = v (o_i - z_i) sum over S in F - {i} of  |S|! (d - |S| - 1)! / d!
                                                    * prod_{j in S} o_j * prod_{j not in S, j != i} z_j

and ``v * prod_j z_j`` to the bias (the expected output). This is the Shapley value of the
game ``E[f(x) | x_S]`` with the cover-weighted expectation that ``pred_contribs`` uses; repeated
splits on a feature multiply into one ``z_j`` and one ``o_j``, as its "unwound" paths do. It
depends on the row only through the ``d`` bits ``o``, so every leaf's ``2**d`` possible
answers are computed once, when the model is loaded. Explaining a row is then: its split
decisions, each leaf's bit pattern, one lookup per leaf and slot, and a sum per feature.

The tables are checked against ``pred_contribs`` on probe rows at every split threshold (and
missing) before they are used; a model they do not support (other boosters, categorical
splits, vector leaves, several outputs, tables above :data:`MAX_TABLE_ENTRIES`) raises
:class:`UnsupportedBooster`, and the caller falls back to xgboost.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import xgboost as xgb

#: Cap on tabulated values (8 bytes each): 4M entries is 32 MB. The largest models the search
#: allows (:class:`models.booster.SearchSpace`) need under a tenth of that.
MAX_TABLE_ENTRIES = 1 << 22
#: Working memory of one pass over rows (split decisions, bit patterns, looked-up values):
#: larger inputs are explained in chunks of rows. Bounded passes are also faster than one
#: pass over a large batch (their arrays stay in the processor's caches); much smaller ones
#: would leave each numpy operation too few rows.
CHUNK_BYTES = 4 << 20
#: Objectives whose ``base_score`` is a probability (the margin starts at its log-odds), and
#: those whose ``base_score`` is already a margin.
_LOGIT_BASE = frozenset({"binary:logistic", "reg:logistic"})
_IDENTITY_BASE = frozenset({"binary:logitraw", "reg:squarederror"})


class UnsupportedBooster(ValueError):
    """The booster cannot be tabulated; explain it with xgboost's ``pred_contribs`` instead."""


@dataclass(frozen=True, eq=False)
class PathTables:
    """Tabulated exact TreeSHAP of one booster. Build with :meth:`from_booster`.

    Layout (arrays read-only). Each leaf with at least one split on its path has ``D`` slots
    (``D``: the most distinct features on any path); slot ``s`` of a leaf is its ``s``-th
    distinct path feature, or padding. A slot's bit is 1 when the row takes the path's branch
    at every split on that feature: up to ``K`` splits per slot, padded with a constant
    column that always agrees (and, for a padding slot, never does, so its bit stays 0).
    Slots are numbered slot-major (``s * n_leaves + leaf``); the real ones are listed by
    feature, as the rows of a sparse 0/1 matrix that sums looked-up values into features.
    """

    n_features: int
    bias: float
    value_scale: float  # sum over trees of the largest |leaf value|: the margin's range
    split_feature: np.ndarray  # (n_splits,) intp: column tested
    split_threshold: np.ndarray  # (n_splits,) float32: go left when x < threshold
    split_default_left: np.ndarray  # (n_splits,) bool: where a missing value goes
    entry_split: np.ndarray  # (K, D * n_leaves) intp into the splits plus the constant column
    entry_goes_right: np.ndarray  # (K, D * n_leaves) bool: the path's branch there
    leaf_row: np.ndarray  # (n_leaves,) intp: each leaf's first position in a ``table`` row
    feature_slots: np.ndarray  # (n_slots,) intp: the real slots, grouped by feature
    feature_ptr: np.ndarray  # (n_features + 1,) intp: feature f's slots are
    #                          feature_slots[feature_ptr[f]:feature_ptr[f + 1]]
    table: np.ndarray  # (D, n_leaves * 2**D) float64: slot s of a leaf, by bit pattern
    # Derived from the fields above in __post_init__ (rebuilt, never pickled: __reduce__).
    _entry_index: np.ndarray = field(init=False, repr=False)
    _feature_sum: sp.csr_array = field(init=False, repr=False)
    _chunk_rows: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
        if self.leaf_row.shape[0] and not (
            self.leaf_row.min() >= 0
            and self.leaf_row.max() + (1 << self.depth) <= self.table.shape[1]
        ):
            raise ValueError("leaf_row points past the table")
        # Each entry's row in the decisions of ``_pass``: "goes left" at each split and at
        # the constant column, then "goes right" at each.
        entry_index = self.entry_split + self.entry_goes_right * (self.split_feature.shape[0] + 1)
        # Sums looked-up values (rows: slots) into features, each feature's slots in the order
        # of ``feature_slots``: the same additions for a row alone as in any batch.
        ones = np.ones(self.feature_slots.shape[0])
        for value in (entry_index, ones):
            value.setflags(write=False)
        feature_sum = sp.csr_array(
            (ones, self.feature_slots, self.feature_ptr),
            shape=(self.n_features, entry_index.shape[1]),
            copy=False,
        )
        feature_sum.check_format(full_check=True)  # scipy's kernel trusts the indices
        object.__setattr__(self, "_entry_index", entry_index)
        object.__setattr__(self, "_feature_sum", feature_sum)
        object.__setattr__(self, "_chunk_rows", max(1, CHUNK_BYTES // self._bytes_per_row()))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled and deep-copied as its fields and rebuilt through __init__, so that the
        # copy's arrays are read-only too and its derived state is derived again.
        fields = tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.init)
        return (PathTables, fields)

    @property
    def depth(self) -> int:
        """``D``: slots per leaf."""
        return int(self.table.shape[0])

    @classmethod
    def from_booster(
        cls, booster: xgb.Booster, max_table_entries: int = MAX_TABLE_ENTRIES
    ) -> PathTables:
        """Tabulate ``booster``; raise :class:`UnsupportedBooster` when that is not possible."""
        learner = json.loads(booster.save_raw("json"))["learner"]
        gb = learner["gradient_booster"]
        if gb.get("name") != "gbtree":
            raise UnsupportedBooster(f"booster type {gb.get('name')!r} (only gbtree)")
        params = learner["learner_model_param"]
        if int(params.get("num_class", 0)) > 1 or int(params.get("num_target", 1)) != 1:
            raise UnsupportedBooster("several outputs")
        bias = _base_margin(learner["objective"]["name"], params["base_score"])
        b = _Builder()
        for tree in gb["model"]["trees"]:
            bias += b.add_tree(tree)
        return b.build(int(params["num_feature"]), bias, max_table_entries)

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact TreeSHAP of each row of ``X``, as :func:`models.explain.tree_contributions`.

        Parameters
        ----------
        X : ndarray of shape (n_rows, n_features)
            NaN for missing. Compared in float32, as xgboost does.

        Returns
        -------
        phi : ndarray of shape (n_rows, n_features), float64
        bias : ndarray of shape (n_rows,), float64
            ``phi.sum(1) + bias`` is the margin.
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must be 2-D with {self.n_features} columns")
        n = X.shape[0]
        phi = np.empty((n, self.n_features))
        # Rows are independent and each is summed in the same order, so chunks of rows bound
        # the working memory (about CHUNK_BYTES) and give the same bits as one pass.
        step = self._chunk_rows
        for start in range(0, n, step):
            rows = np.asarray(X[start : start + step], dtype=np.float32)
            phi[start : start + step] = self._pass(rows).T
        return phi, np.full(n, self.bias)

    def _pass(self, X: np.ndarray) -> np.ndarray:
        """``phi.T`` of the float32 rows ``X``: (n_features, n_rows)."""
        n = X.shape[0]
        n_splits, n_leaves, d = self.split_feature.shape[0], self.leaf_row.shape[0], self.depth
        # Row-minor ((items, n_rows) arrays): every step is whole-row operations.
        x = X.T[self.split_feature]
        decisions = np.empty((2, n_splits + 1, n), dtype=bool)
        left = decisions[0]
        np.less(x, self.split_threshold[:, None], out=left[:-1])
        left[:-1] |= np.isnan(x) & self.split_default_left[:, None]
        left[-1] = True  # the constant column of the padding entries
        np.logical_not(left, out=decisions[1])
        decisions = decisions.reshape(2 * (n_splits + 1), n)
        # A slot's bit: the row takes the path's branch at each of its (up to K) splits.
        bits = decisions[self._entry_index[0]]
        for entries in self._entry_index[1:]:
            bits &= decisions[entries]
        # Bit s of a leaf's pattern is its slot s (at most 8 slots: one byte).
        bits = bits.reshape(d, n_leaves, n).view(np.uint8)
        for s in range(1, d):
            bits[0] |= bits[s] << s
        pattern = self.leaf_row[:, None] + bits[0]
        values = np.empty((d, n_leaves, n))
        for s in range(d):
            # Patterns stay within their leaf's 2**D entries (leaf_row is checked when built);
            # mode="raise" would copy through a buffer.
            self.table[s].take(pattern, out=values[s], mode="clip")
        result: np.ndarray = self._feature_sum @ values.reshape(d * n_leaves, n)
        return result

    def _bytes_per_row(self) -> int:
        """The memory one row takes in :meth:`_pass`, roughly."""
        n_splits, n_slots = self.split_feature.shape[0], self._entry_index.shape[1]
        # float32 x, 2 decisions, 2 bytes of bits per slot, intp patterns, float64 values, the
        # float32 input and float64 result.
        return 6 * n_splits + 10 * n_slots + 8 * self.leaf_row.shape[0] + 12 * self.n_features

    def probe_rows(self, n_rows: int = 64, seed: int = 0) -> np.ndarray:
        """Rows that put every split's feature at, just below or above its threshold, or
        missing: the cases a wrong branch, default direction or cover would get wrong."""
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(n_rows, self.n_features)).astype(np.float32)
        if not self.split_feature.shape[0]:
            return X
        thr = self.split_threshold
        candidates = np.stack(
            [thr, np.nextafter(thr, np.float32(-np.inf)), np.nextafter(thr, np.float32(np.inf)),
             np.full_like(thr, np.nan)]
        )  # fmt: skip
        for r in range(n_rows):
            pick = rng.permutation(thr.shape[0])
            X[r, self.split_feature[pick]] = candidates[rng.integers(0, 4, pick.shape[0]), pick]
        return X

    def check_against(self, booster: xgb.Booster, n_rows: int = 64) -> float:
        """Largest absolute difference from ``pred_contribs`` on :meth:`probe_rows`.

        Raises :class:`UnsupportedBooster` when it exceeds what xgboost's float32 sums can
        explain: 1e-5 of the margin's range. A wrong branch, default direction or cover is off
        by a fraction of a leaf value instead."""
        X = self.probe_rows(n_rows)
        dmat = xgb.DMatrix(X, missing=np.nan, nthread=1)
        ref = booster.predict(dmat, pred_contribs=True, validate_features=False).astype(np.float64)
        phi, bias = self.contributions(X)
        diff = max(float(np.abs(ref[:, :-1] - phi).max(initial=0.0)),
                   float(np.abs(ref[:, -1] - bias).max(initial=0.0)))  # fmt: skip
        if not diff <= 1e-5 * (abs(self.bias) + self.value_scale) + 1e-7:
            raise UnsupportedBooster(f"tables differ from pred_contribs by {diff:.3g}")
        return diff


def _base_margin(objective: str, base_score: Any) -> float:
    values = [float(v) for v in str(base_score).strip("[]").split(",") if v.strip()]
    if len(values) != 1:
        raise UnsupportedBooster("a vector base_score")
    # base_score is stored as float32; the margin starts from exactly that value.
    base = float(np.float32(values[0]))
    if objective in _LOGIT_BASE:
        if not 0.0 < base < 1.0:
            raise UnsupportedBooster(f"base_score {base} outside (0, 1)")
        return math.log(base / (1.0 - base))
    if objective in _IDENTITY_BASE:
        return base
    raise UnsupportedBooster(f"objective {objective!r}")


class _Leaf(NamedTuple):
    value: float
    features: list[int]  # distinct path features, in path order
    z: np.ndarray  # (d,) cover fraction per feature
    entries: list[list[tuple[int, bool]]]  # per feature: (split, goes right) along the path


class _Builder:
    """Collects splits and leaves tree by tree, then lays out the padded arrays once."""

    def __init__(self) -> None:
        self.split_feature: list[int] = []
        self.split_threshold: list[float] = []
        self.split_default_left: list[bool] = []
        self.leaves: list[_Leaf] = []
        self.value_scale = 0.0

    def add_tree(self, tree: dict[str, Any]) -> float:
        """Add one tree; return its expected value (its share of the bias)."""
        if int(tree["tree_param"].get("size_leaf_vector", 1)) > 1:
            raise UnsupportedBooster("vector leaves")
        if any(int(t) != 0 for t in tree.get("split_type", [])):
            raise UnsupportedBooster("categorical splits")
        left = tree["left_children"]
        right = tree["right_children"]
        feature = tree["split_indices"]
        # Split thresholds and leaf values share one array; both are float32 in the model.
        cond = np.asarray(tree["split_conditions"], dtype=np.float32).astype(np.float64)
        cover = np.asarray(tree["sum_hessian"], dtype=np.float32).astype(np.float64)
        default_left = tree["default_left"]
        self.value_scale += float(np.abs(cond[np.asarray(left) == -1]).max(initial=0.0))
        split_id: dict[int, int] = {}
        for node, child in enumerate(left):
            if child != -1:
                if not cover[node] > 0:
                    raise UnsupportedBooster("a split with no cover")
                split_id[node] = len(self.split_feature)
                self.split_feature.append(int(feature[node]))
                self.split_threshold.append(float(cond[node]))
                self.split_default_left.append(bool(default_left[node]))
        expected = 0.0
        # Depth-first over (node, path): path = [(node, goes_right, cover fraction), ...].
        stack: list[tuple[int, list[tuple[int, bool, float]]]] = [(0, [])]
        while stack:
            node, path = stack.pop()
            if left[node] != -1:
                c = cover[node]
                stack.append((right[node], [*path, (node, True, cover[right[node]] / c)]))
                stack.append((left[node], [*path, (node, False, cover[left[node]] / c)]))
                continue
            features: list[int] = []
            entries: list[list[tuple[int, bool]]] = []
            fractions: list[float] = []
            for split, goes_right, fraction in path:
                f = int(feature[split])
                if f not in features:
                    features.append(f)
                    entries.append([])
                    fractions.append(1.0)
                s = features.index(f)
                entries[s].append((split_id[split], goes_right))
                fractions[s] *= fraction
            z = np.asarray(fractions)
            value = float(cond[node])
            expected += value * float(np.prod(z))
            if features:
                self.leaves.append(_Leaf(value, features, z, entries))
        return expected

    def build(self, n_features: int, bias: float, max_table_entries: int) -> PathTables:
        leaves = self.leaves
        n_leaves = len(leaves)
        d = max((len(leaf.features) for leaf in leaves), default=1)
        if d > 8:
            raise UnsupportedBooster(f"{d} distinct features on a path (at most 8)")
        k = max((len(e) for leaf in leaves for e in leaf.entries), default=1)
        if n_leaves * (d << d) > max_table_entries:
            raise UnsupportedBooster(f"tables above {max_table_entries} entries")
        const = len(self.split_feature)  # the always-true column after the splits
        # Entries (K, D, n_leaves): padding within a slot agrees (goes left = True); a
        # padding slot's first entry never agrees, so its bit is 0.
        entry_split = np.full((k, d, n_leaves), const, dtype=np.intp)
        entry_right = np.zeros((k, d, n_leaves), dtype=bool)
        entry_right[0] = True
        table = np.zeros((n_leaves, 1 << d, d))
        slot_feature = np.full((n_leaves, d), -1, dtype=np.intp)
        for j, leaf in enumerate(leaves):
            n_slots = len(leaf.features)
            table[j, : 1 << n_slots, :n_slots] = _leaf_table(leaf.value, leaf.z)
            slot_feature[j, :n_slots] = leaf.features
            for s, slot in enumerate(leaf.entries):
                entry_right[0, s, j] = False
                for e, (split, goes_right) in enumerate(slot):
                    entry_split[e, s, j] = split
                    entry_right[e, s, j] = goes_right
        flat = slot_feature.T.reshape(-1)  # slot-major, as ``_pass`` lays out its values
        real = np.flatnonzero(flat >= 0)
        slots = real[np.argsort(flat[real], kind="stable")]
        ptr = np.searchsorted(flat[slots], np.arange(n_features + 1))
        return PathTables(
            n_features=n_features,
            bias=bias,
            value_scale=self.value_scale,
            split_feature=np.asarray(self.split_feature, dtype=np.intp),
            split_threshold=np.asarray(self.split_threshold, dtype=np.float32),
            split_default_left=np.asarray(self.split_default_left, dtype=bool),
            entry_split=entry_split.reshape(k, d * n_leaves),
            entry_goes_right=entry_right.reshape(k, d * n_leaves),
            leaf_row=np.arange(n_leaves, dtype=np.intp) << d,
            feature_slots=slots.astype(np.intp),
            feature_ptr=ptr.astype(np.intp),
            table=np.ascontiguousarray(table.transpose(2, 0, 1).reshape(d, -1)),
        )


def _leaf_table(value: float, z: np.ndarray) -> np.ndarray:
    """``(2**d, d)``: the leaf's contribution to each of its ``d`` features, for every bit
    pattern ``o`` (bit ``s`` of the row index is ``o`` of feature ``s``)."""
    d = z.shape[0]
    o = (np.arange(1 << d)[:, None] >> np.arange(d)[None, :]) & 1
    # Shapley weights |S|! (d - |S| - 1)! / d! by subset size |S| = 0..d-1.
    w = np.array(
        [math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d) for k in range(d)]
    )
    table = np.empty((1 << d, d))
    for i in range(d):
        # Coefficients of prod_{j != i} (z_j + o_j t): coefficient k sums the subsets of size k.
        coef = np.zeros((1 << d, d))
        coef[:, 0] = 1.0
        for j in range(d):
            if j != i:
                shifted = np.zeros_like(coef)
                shifted[:, 1:] = coef[:, :-1] * o[:, j : j + 1]
                coef = coef * z[j] + shifted
        table[:, i] = value * (o[:, i] - z[i]) * (coef @ w)
    return table
