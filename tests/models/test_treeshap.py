"""Tabulated TreeSHAP (models.treeshap) against xgboost's own pred_contribs."""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle
import sys
import tracemalloc
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from models import treeshap
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


def _train(params: dict, seed: int = 0, **data) -> tuple[xgb.Booster, np.ndarray]:
    X, y = _data(seed=seed, **data)
    if params.get("objective", "").startswith("reg:squared"):
        y = y * 3 + np.nan_to_num(X[:, 1]).clip(-2, 2)
    p = {"objective": "binary:logistic", "nthread": 1, "seed": seed, **params}
    rounds = p.pop("rounds", 12)
    return xgb.train(p, xgb.DMatrix(X, label=y, missing=np.nan), rounds), X


MODELS: dict[str, dict[str, Any]] = {
    "depth 1": {"max_depth": 1},
    "depth 2": {"max_depth": 2},
    "depth 3": {"max_depth": 3},
    "depth 4": {"max_depth": 4},
    "depth 5": {"max_depth": 5},
    "depth 6, features repeat on paths": {"max_depth": 6, "colsample_bytree": 0.5},
    "many trees": {"max_depth": 3, "eta": 0.05, "subsample": 0.7, "rounds": 300},
    "base_score set": {"max_depth": 4, "base_score": 0.3},
    "logitraw": {"max_depth": 3, "objective": "binary:logitraw"},
    "squared error": {"max_depth": 4, "objective": "reg:squarederror"},
    "stumps and single leaves": {"max_depth": 2, "min_split_loss": 40.0},
}


@pytest.mark.parametrize("name", MODELS)
def test_contributions_equal_pred_contribs(name: str) -> None:
    booster, X = _train(MODELS[name])
    tables = PathTables.from_booster(booster)
    every_missing = np.full((1, X.shape[1]), np.nan)
    for rows in (X, tables.probe_rows(200, seed=1), every_missing):
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
    assert tables.entry_split.shape[0] >= 2, "no path splits twice on one feature: too easy"
    assert tables.split_default_left.any() and not tables.split_default_left.all()
    many = PathTables.from_booster(_train(MODELS["many trees"])[0])
    assert many.leaf_row.size > 1000, "the many-trees model is small"


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
    assert phi.shape == (5, 6) and not phi.any()
    ref_phi, ref_bias = tree_contributions(booster, X[:5])
    np.testing.assert_allclose(bias, ref_bias, atol=2e-6)


def test_a_row_gets_the_same_bits_alone_as_in_a_batch() -> None:
    booster, X = _train(MODELS["depth 6, features repeat on paths"])
    tables = PathTables.from_booster(booster)
    phi, _ = tables.contributions(X)
    for i in (0, 17, len(X) - 1):
        alone, _ = tables.contributions(X[i : i + 1])
        np.testing.assert_array_equal(alone[0], phi[i])
    # Column-major or float32 input (the feature kernel's layout) gives the same bits.
    np.testing.assert_array_equal(tables.contributions(np.asfortranarray(X))[0], phi)
    np.testing.assert_array_equal(tables.contributions(X.astype(np.float32))[0], phi)
    assert tables.contributions(X)[1].shape == (len(X),)


def test_chunks_of_rows_give_the_same_bits_as_one_pass(monkeypatch) -> None:
    booster, X = _train(MODELS["depth 6, features repeat on paths"])
    tables = PathTables.from_booster(booster)
    monkeypatch.setattr(treeshap, "CHUNK_BYTES", len(X) * tables._bytes_per_row())
    one_pass = dataclasses.replace(tables)
    monkeypatch.setattr(treeshap, "CHUNK_BYTES", 7 * tables._bytes_per_row())
    chunked = dataclasses.replace(tables)
    assert one_pass._chunk_rows == len(X) and chunked._chunk_rows == 7
    phi = one_pass.contributions(X)[0]
    np.testing.assert_array_equal(chunked.contributions(X)[0], phi)
    for n in (1, 6, 7, 8, 15):
        np.testing.assert_array_equal(chunked.contributions(X[:n])[0], phi[:n])


def test_working_memory_is_bounded_by_the_chunks(monkeypatch) -> None:
    booster, X = _train(MODELS["depth 6, features repeat on paths"])
    monkeypatch.setattr(treeshap, "CHUNK_BYTES", 1 << 18)
    tables = PathTables.from_booster(booster)
    rows = np.tile(X, (10, 1))
    assert len(rows) * tables._bytes_per_row() > 50 * treeshap.CHUNK_BYTES
    tracemalloc.start()
    try:
        tables.contributions(rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    output = len(rows) * (tables.n_features + 1) * 8  # phi and bias
    assert peak < output + 2 * treeshap.CHUNK_BYTES, peak


def test_copies_are_read_only_tables_with_the_same_values() -> None:
    booster, X = _train(MODELS["depth 3"])
    tables = PathTables.from_booster(booster)
    for twin in (pickle.loads(pickle.dumps(tables)), copy.deepcopy(tables)):
        assert twin.table is not tables.table
        assert not any(v.flags.writeable for v in vars(twin).values() if isinstance(v, np.ndarray))
        np.testing.assert_array_equal(twin.contributions(X)[0], tables.contributions(X)[0])


def test_malformed_tables_are_refused() -> None:
    booster, X = _train(MODELS["depth 3"])
    tables = PathTables.from_booster(booster)
    bad_slots = tables.feature_slots.copy()
    bad_slots[0] = tables.depth * tables.leaf_row.size  # past the last slot
    with pytest.raises(ValueError, match="indices must be <"):
        dataclasses.replace(tables, feature_slots=bad_slots)
    with pytest.raises(ValueError, match="leaf_row points past the table"):
        dataclasses.replace(tables, table=tables.table[:, :-1].copy())
    # Every other index is bounds-checked by numpy as it is read.
    bad_entry = tables.entry_split.copy()
    bad_entry[0, 3] = 2 * tables.split_feature.size + 2
    with pytest.raises(IndexError):
        dataclasses.replace(tables, entry_split=bad_entry).contributions(X[:2])


def test_no_compiled_module_is_loaded() -> None:
    # Installs from wheels have no compiler, and logged models hold no compiled file.
    import models.pyfunc  # noqa: F401  (the scorer, explain and treeshap with it)

    assert "models._treeshap" not in sys.modules


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
