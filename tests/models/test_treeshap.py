"""Tabulated TreeSHAP (models.treeshap) against xgboost's own pred_contribs."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import xgboost as xgb

from models.explain import tree_contributions
from models.scorer import _path_tables
from models.treeshap import PathTables, UnsupportedBooster


def _data(n: int = 600, p: int = 6, seed: int = 0, missing: float = 0.15):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    # Few distinct values on column 0: deep trees split on it again along one path.
    X[:, 0] = rng.integers(0, 5, n)
    logit = X[:, 0] - 2 + 1.5 * X[:, 1] * (X[:, 2] > 0) - X[:, 3]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    X[rng.random(X.shape) < missing] = np.nan  # default directions are learned
    return X, y


def _train(params: dict, rounds: int = 12, seed: int = 0, **data) -> tuple[xgb.Booster, np.ndarray]:
    X, y = _data(seed=seed, **data)
    if params.get("objective", "").startswith("reg:squared"):
        y = y * 3 + np.nan_to_num(X[:, 1]).clip(-2, 2)
    p = {"objective": "binary:logistic", "nthread": 1, "seed": seed, **params}
    return xgb.train(p, xgb.DMatrix(X, label=y, missing=np.nan), rounds), X


MODELS = {
    "depth 1": {"max_depth": 1},
    "depth 3": {"max_depth": 3},
    "depth 6, features repeat on paths": {"max_depth": 6, "colsample_bytree": 0.5},
    "base_score set": {"max_depth": 4, "base_score": 0.3},
    "logitraw": {"max_depth": 3, "objective": "binary:logitraw"},
    "squared error": {"max_depth": 4, "objective": "reg:squarederror"},
    "stumps and single leaves": {"max_depth": 2, "min_split_loss": 40.0},
}


@pytest.mark.parametrize("name", MODELS)
def test_contributions_equal_pred_contribs(name: str) -> None:
    booster, X = _train(MODELS[name])
    tables = PathTables.from_booster(booster)
    for rows in (X, tables.probe_rows(200, seed=1)):
        ref_phi, ref_bias = tree_contributions(booster, rows)
        phi, bias = tables.contributions(rows)
        # xgboost sums in float32: equal to its rounding, on the data and at every threshold.
        np.testing.assert_allclose(phi, ref_phi, rtol=0, atol=2e-6)
        np.testing.assert_allclose(bias, ref_bias, rtol=0, atol=2e-6)
        margin = booster.predict(
            xgb.DMatrix(rows, missing=np.nan), output_margin=True, validate_features=False
        )
        np.testing.assert_allclose(phi.sum(1) + bias, margin, rtol=0, atol=5e-6)
    assert tables.check_against(booster) < 2e-6


def test_repeated_features_and_missing_values_are_exercised() -> None:
    booster, _ = _train(MODELS["depth 6, features repeat on paths"])
    tables = PathTables.from_booster(booster)
    k = tables.entry_split.size // (tables.depth * tables.leaf_row.size)
    assert k >= 2, "no path splits twice on one feature: the test model is too easy"
    assert tables.split_default_left.any() and not tables.split_default_left.all()


def test_stumps_of_one_leaf_only_move_the_bias() -> None:
    X, y = _data()
    booster = xgb.train(
        {"objective": "binary:logistic", "min_split_loss": 1e9, "nthread": 1},
        xgb.DMatrix(X, label=y, missing=np.nan),
        3,
    )
    tables = PathTables.from_booster(booster)
    assert tables.leaf_row.size == 0
    phi, bias = tables.contributions(X[:5])
    assert not phi.any()
    ref_phi, ref_bias = tree_contributions(booster, X[:5])
    np.testing.assert_allclose(bias, ref_bias, atol=2e-6)


def test_a_row_gets_the_same_bits_alone_as_in_a_batch() -> None:
    booster, X = _train(MODELS["depth 6, features repeat on paths"])
    tables = PathTables.from_booster(booster)
    phi, _ = tables.contributions(X)
    for i in (0, 17, len(X) - 1):
        alone, _ = tables.contributions(X[i : i + 1])
        np.testing.assert_array_equal(alone[0], phi[i])
    # Column-major input (the feature kernel's layout) gives the same bits.
    np.testing.assert_array_equal(tables.contributions(np.asfortranarray(X))[0], phi)
    assert tables.contributions(X)[1].shape == (len(X),)


def _reference(tables: PathTables, X: np.ndarray) -> np.ndarray:
    """The numpy formulation the compiled pass replaced (whole-array steps over rows)."""
    X = np.asarray(X, dtype=np.float32)
    n, n_leaves, d = X.shape[0], tables.leaf_row.shape[0], tables.depth
    x = X.T[tables.split_feature]
    left = np.ones((x.shape[0] + 1, n), dtype=bool)
    left[:-1] = (x < tables.split_threshold[:, None]) | (
        np.isnan(x) & tables.split_default_left[:, None]
    )
    agree = left[tables.entry_split] ^ tables.entry_goes_right[:, None]
    bits = agree.reshape(-1, d, n_leaves, n).all(axis=0)
    pattern = (bits.astype(np.intp) << np.arange(d)[:, None, None]).sum(axis=0)
    pattern += tables.leaf_row[:, None]
    values = np.stack([tables.table[s][pattern] for s in range(d)])
    phi = np.zeros((tables.n_features, n))
    phi[tables.used_features] = np.add.reduceat(
        values.reshape(d * n_leaves, n)[tables.value_order], tables.feature_start, axis=0
    )
    return phi.T


@pytest.mark.parametrize("name", MODELS)
def test_compiled_pass_equals_the_array_formulation(name: str) -> None:
    # The same terms summed: only the order of additions differs (numpy adds pairwise along a
    # contiguous axis), so values agree to a few units in the last place.
    booster, X = _train(MODELS[name])
    tables = PathTables.from_booster(booster)
    for rows in (X, tables.probe_rows(200, seed=2)):
        ref = _reference(tables, rows)
        np.testing.assert_allclose(tables.contributions(rows)[0], ref, rtol=0, atol=1e-12)


def test_tables_survive_pickling_and_deep_copies() -> None:
    import copy
    import pickle

    booster, X = _train(MODELS["depth 3"])
    tables = PathTables.from_booster(booster)
    for twin in (pickle.loads(pickle.dumps(tables)), copy.deepcopy(tables)):
        assert twin._compiled is not tables._compiled
        np.testing.assert_array_equal(twin.contributions(X)[0], tables.contributions(X)[0])


def test_working_memory_is_the_output_alone() -> None:
    import tracemalloc

    booster, X = _train(MODELS["depth 6, features repeat on paths"])
    tables = PathTables.from_booster(booster)
    rows = np.tile(X, (2, 1))[:1000]
    tracemalloc.start()
    try:
        tables.contributions(rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # phi (1,000 x 6 float64), the float32 copy of the rows and the bias: ~80 kB. The array
    # formulation held (entries x rows) booleans and (slots x rows) doubles: megabytes.
    assert peak < 160_000, peak


def test_malformed_tables_are_refused_when_built_not_read() -> None:
    # The compiled pass trusts the indices it was built with: they are checked once, up front.
    booster, X = _train(MODELS["depth 3"])
    tables = PathTables.from_booster(booster)
    bad_split = tables.entry_split.copy()
    bad_split[3] = tables.split_feature.size + 1  # past the constant column
    with pytest.raises(ValueError, match=r"entry_split\[3\] out of range"):
        dataclasses.replace(tables, entry_split=bad_split)
    bad_order = tables.value_order.copy()
    bad_order[0] = -1
    with pytest.raises(ValueError, match="value_order"):
        dataclasses.replace(tables, value_order=bad_order)
    with pytest.raises(ValueError, match="table has"):
        dataclasses.replace(tables, table=tables.table[:, :-1].copy())
    with pytest.raises(ValueError, match="rows of 6 float32"):
        tables._compiled.contributions(X[:2, :5].astype(np.float32).copy(), np.empty((2, 6)))
    with pytest.raises(TypeError, match="entry_split must be a int64"):
        dataclasses.replace(tables, entry_split=tables.entry_split.astype(np.int32))


def test_wrong_shape_is_refused_and_arrays_are_read_only() -> None:
    booster, X = _train(MODELS["depth 3"])
    tables = PathTables.from_booster(booster)
    with pytest.raises(ValueError, match="6 columns"):
        tables.contributions(X[:, :5])
    with pytest.raises(ValueError, match="read-only"):
        tables.table[0, 0] = 1.0
    phi, bias = tables.contributions(np.empty((0, 6)))
    assert phi.shape == (0, 6) and bias.shape == (0,)


def test_a_wrong_table_fails_the_check() -> None:
    booster, _ = _train(MODELS["depth 3"])
    tables = PathTables.from_booster(booster)
    broken = dataclasses.replace(tables, table=tables.table * 1.001)
    with pytest.raises(UnsupportedBooster, match="differ from pred_contribs"):
        broken.check_against(booster)
    flipped = dataclasses.replace(tables, split_default_left=~tables.split_default_left)
    with pytest.raises(UnsupportedBooster, match="differ from pred_contribs"):
        flipped.check_against(booster)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"booster": "dart", "max_depth": 2}, "dart"),
        ({"objective": "multi:softprob", "num_class": 3, "max_depth": 2}, "several outputs"),
        ({"objective": "reg:gamma", "max_depth": 2}, "objective"),
    ],
)
def test_unsupported_models_are_refused(params: dict, reason: str) -> None:
    X, y = _data()
    if params.get("num_class"):
        y = np.random.default_rng(0).integers(0, 3, len(y))
    if params.get("objective") == "reg:gamma":
        y = y + 1.0
    booster = xgb.train({"nthread": 1, **params}, xgb.DMatrix(X, label=y, missing=np.nan), 3)
    with pytest.raises(UnsupportedBooster, match=reason):
        PathTables.from_booster(booster)


def test_categorical_splits_and_oversized_tables_are_refused() -> None:
    rng = np.random.default_rng(0)
    import pandas as pd

    frame = pd.DataFrame({"c": pd.Categorical(rng.integers(0, 4, 300)), "x": rng.normal(size=300)})
    y = (frame["c"].cat.codes.to_numpy() > 1).astype(float)
    cat = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        xgb.DMatrix(frame, label=y, enable_categorical=True),
        3,
    )
    with pytest.raises(UnsupportedBooster, match="categorical"):
        PathTables.from_booster(cat)
    booster, _ = _train(MODELS["depth 3"])
    with pytest.raises(UnsupportedBooster, match="tables above 10 entries"):
        PathTables.from_booster(booster, max_table_entries=10)


def test_scorer_falls_back_to_xgboost_with_a_warning(caplog) -> None:
    X, y = _data()
    dart = xgb.train(
        {"booster": "dart", "objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        xgb.DMatrix(X, label=y, missing=np.nan),
        3,
    )
    with caplog.at_level(logging.WARNING, logger="models.scorer"):
        assert _path_tables(dart) is None
    assert "pred_contribs" in caplog.text and "dart" in caplog.text
    booster, _ = _train(MODELS["depth 3"])
    assert isinstance(_path_tables(booster), PathTables)
