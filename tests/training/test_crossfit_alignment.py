"""training.crossfit.align_folds: out-of-fold margins moved to the served booster's level,
landmark by landmark, measured on rows none of the boosters saw."""

from __future__ import annotations

import numpy as np
import pytest

from training.crossfit import MIN_ALIGN_ROWS, align_folds, alignment_text, cross_fit


class _Linear:
    """A booster stand-in whose margin is a known function of (feature, landmark)."""

    def __init__(self, offset_by_landmark: dict[int, float], base: float = 0.0) -> None:
        self.offset, self.base = offset_by_landmark, base

    def inplace_predict(self, X, predict_type, missing):
        k = np.nan_to_num(X[:, 1], nan=-1).astype(int)
        return X[:, 0] + self.base + np.array([self.offset.get(j, 0.0) for j in k])


def _shift(table, landmark: float, fold: int) -> float:
    (value,) = table.loc[(table["landmark"] == landmark) & (table["fold"] == fold), "shift"]
    return float(value)


def _rows(rng: np.random.Generator, per_landmark: dict[int, int]) -> np.ndarray:
    k = np.concatenate([np.full(n, j) for j, n in per_landmark.items()])
    return np.column_stack([rng.normal(size=k.size), k]).astype(np.float32)


def test_each_folds_gap_to_the_served_booster_is_removed_at_each_landmark() -> None:
    rng = np.random.default_rng(0)
    served = _Linear({})
    # Fold 0 sits low at landmarks 4-5, fold 1 high at 11: the pattern the cross-fit showed.
    folds = [_Linear({4: -0.02, 5: -0.015}), _Linear({11: 0.011}), _Linear({}, base=0.005)]
    reference = _rows(rng, {j: 300 for j in range(1, 13)})
    dev = _rows(rng, {j: 400 for j in range(1, 13)})
    fold = rng.integers(0, 3, size=dev.shape[0])
    oof = np.array([folds[f].inplace_predict(dev[i : i + 1], "margin", np.nan)[0]
                    for i, f in enumerate(fold)])  # fmt: skip

    aligned, shift = align_folds(
        oof, fold, dev[:, 1], boosters=folds, booster=served, reference=reference,
        landmark_column=1,
    )  # fmt: skip

    # Every aligned margin is now the served booster's on the same row.
    np.testing.assert_allclose(aligned, served.inplace_predict(dev, "margin", np.nan), atol=1e-6)
    assert _shift(shift, 4.0, 0) == pytest.approx(0.02, abs=1e-6)
    assert _shift(shift, 11.0, 1) == pytest.approx(-0.011, abs=1e-6)
    assert _shift(shift, 7.0, 2) == pytest.approx(-0.005, abs=1e-6)
    assert _shift(shift, 7.0, 0) == pytest.approx(0.0, abs=1e-6)
    text = alignment_text(shift)
    assert "3 fold models" in text and "at each landmark" in text and "-0.011" in text


def test_a_sparse_landmark_borrows_its_neighbours_and_weights_count() -> None:
    rng = np.random.default_rng(1)
    served = _Linear({})
    fold = _Linear({14: -0.1, 15: -0.3})
    # Landmark 15 has 10 reference rows: its shift is taken over 14-16 (as many as it needs).
    reference = _rows(rng, {13: 50, 14: MIN_ALIGN_ROWS, 15: 10, 16: 50})
    dev = _rows(rng, {15: 20})
    oof = fold.inplace_predict(dev, "margin", np.nan)
    _, shift = align_folds(oof, np.zeros(20, int), dev[:, 1], boosters=[fold], booster=served,
                           reference=reference, landmark_column=1)  # fmt: skip
    near = (reference[:, 1] >= 14) & (reference[:, 1] <= 16)
    want = np.mean(
        np.where(reference[near, 1] == 14, 0.1, np.where(reference[near, 1] == 15, 0.3, 0.0))
    )
    assert _shift(shift, 15.0, 0) == pytest.approx(want, abs=1e-6)

    # Reference weights weigh the mean: all weight on landmark 15's own rows gives its gap.
    w = np.where(reference[:, 1] == 15, 1.0, 1e-12)
    _, shift = align_folds(oof, np.zeros(20, int), dev[:, 1], boosters=[fold], booster=served,
                           reference=reference, reference_weight=w, landmark_column=1)  # fmt: skip
    assert _shift(shift, 15.0, 0) == pytest.approx(0.3, abs=1e-6)


def test_without_a_landmark_one_pooled_shift_per_fold() -> None:
    rng = np.random.default_rng(2)
    served, fold = _Linear({}), _Linear({2: -0.4})
    reference = _rows(rng, {1: 100, 2: 100})
    dev = _rows(rng, {1: 10, 2: 10})
    oof = fold.inplace_predict(dev, "margin", np.nan)
    aligned, shift = align_folds(oof, np.zeros(20, int), None, boosters=[fold], booster=served,
                                 reference=reference)  # fmt: skip
    assert len(shift) == 1 and _shift(shift, 0.0, 0) == pytest.approx(0.2, abs=1e-6)
    np.testing.assert_allclose(aligned, oof + 0.2, atol=1e-6)
    assert "one pooled shift per fold" in alignment_text(shift)


def test_without_reference_rows_the_margins_stay_and_the_card_says_so() -> None:
    oof = np.array([0.1, 0.2, 0.3])
    aligned, shift = align_folds(oof, np.zeros(3, int), np.ones(3), boosters=[_Linear({})],
                                 booster=_Linear({}), reference=np.empty((0, 2), np.float32),
                                 landmark_column=1)  # fmt: skip
    np.testing.assert_array_equal(aligned, oof)
    assert shift.empty and "no reference rows" in alignment_text(shift)


def test_missing_landmarks_and_weightless_references_are_handled_or_refused() -> None:
    rng = np.random.default_rng(4)
    served, fold = _Linear({}), _Linear({3: -0.2})
    reference = _rows(rng, {2: 100, 3: 100, 4: 100})
    dev = _rows(rng, {3: 10})
    oof = fold.inplace_predict(dev, "margin", np.nan)
    # Reference rows without a landmark or without weight are left out of every window.
    reference[:50, 1] = np.nan
    w = np.ones(reference.shape[0])
    w[reference[:, 1] == 4] = 0.0
    aligned, shift = align_folds(oof, np.zeros(10, int), dev[:, 1], boosters=[fold],
                                 booster=served, reference=reference, reference_weight=w,
                                 landmark_column=1, min_rows=100)  # fmt: skip
    assert np.isfinite(aligned).all() and np.isfinite(shift["shift"]).all()
    assert _shift(shift, 3.0, 0) == pytest.approx(0.2, abs=1e-6)
    assert len(shift) == 1
    row = shift.iloc[0]
    assert row["rows"] == 100 and (row["from"], row["to"]) == (3.0, 3.0)
    # An out-of-fold row without a landmark, or no usable reference row, is an error.
    bad = dev[:, 1].copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="without a landmark"):
        align_folds(oof, np.zeros(10, int), bad, boosters=[fold], booster=served,
                    reference=reference, landmark_column=1)  # fmt: skip
    with pytest.raises(ValueError, match="with a landmark"):
        align_folds(oof, np.zeros(10, int), dev[:, 1], boosters=[fold], booster=served,
                    reference=reference, reference_weight=np.zeros(reference.shape[0]),
                    landmark_column=1)  # fmt: skip


def test_a_small_reference_is_called_pooled_on_the_card() -> None:
    rng = np.random.default_rng(5)
    reference = _rows(rng, {1: 20, 2: 20})
    dev = _rows(rng, {1: 5, 2: 5})
    _, shift = align_folds(np.zeros(10), np.zeros(10, int), dev[:, 1], boosters=[_Linear({})],
                           booster=_Linear({}), reference=reference, landmark_column=1)  # fmt: skip
    assert "too few calibration rows to tell landmarks apart" in alignment_text(shift)
    assert (shift["se"] == 0).all()  # identical boosters: no spread in the differences


def test_cross_fit_with_a_reference_aligns_real_fold_models() -> None:
    """On real boosters: the out-of-fold margins move by their fold's shift at their landmark,
    and each fold model plus its shifts has the served booster's mean on the reference rows."""
    import xgboost as xgb  # noqa: F401 - the real thing

    rng = np.random.default_rng(3)
    n = 1200
    k = rng.integers(1, 9, size=n).astype(np.float32)
    x = rng.normal(size=n).astype(np.float32)
    X = np.column_stack([x, k])
    y = (rng.random(n) < 1 / (1 + np.exp(-(x - 0.1 * k)))).astype(float)
    groups = np.arange(n) // 4
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "subsample": 0.7,
              "seed": 0, "nthread": 1}  # fmt: skip
    # ~300 reference rows per landmark: every shift is measured at its own landmark.
    reference = np.column_stack([rng.normal(size=2400), rng.integers(1, 9, size=2400)])
    reference = reference.astype(np.float32)

    plain = cross_fit(params, X, y, groups, n_trees=20, feature_names=["x", "k"], seed=1)
    assert plain.shift.empty
    done = cross_fit(params, X, y, groups, n_trees=20, feature_names=["x", "k"], seed=1,
                     reference=reference, landmark_column=1)  # fmt: skip
    # Same boosters, same folds: only the out-of-fold margins moved, by the tabled shifts.
    np.testing.assert_array_equal(done.booster.save_raw(), plain.booster.save_raw())
    # Row by row: each margin moved by its own fold's shift at its own landmark.
    from training.crossfit import _folds

    fold = np.empty(n, dtype=int)
    for f, (_, held_out) in enumerate(_folds(5, 1).split(X, y, groups)):
        fold[held_out] = f
    table = done.shift.set_index(["landmark", "fold"])["shift"]
    want = table.loc[list(zip(X[:, 1].astype(float), fold, strict=True))].to_numpy()
    np.testing.assert_allclose(done.margin - plain.margin, want, atol=1e-9)
    assert np.abs(want).max() > 0
    assert sorted(done.shift["landmark"].unique()) == list(np.arange(1.0, 9.0))
    # What the shifts are for: on the reference rows, each fold model's margins plus its
    # shift have the served booster's mean at every landmark.
    from models.booster import margin

    served = margin(done.booster, reference)
    for f, fold_booster in enumerate(done.fold_boosters):
        moved = (
            margin(fold_booster, reference)
            + table.loc[
                list(zip(reference[:, 1].astype(float), [f] * len(reference), strict=True))
            ].to_numpy()
        )
        for k in range(1, 9):
            at = reference[:, 1] == k
            assert moved[at].mean() == pytest.approx(served[at].mean(), abs=1e-9)
