"""Booster fitting: bounded search, early stopping, trimming, input checks."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import xgboost as xgb
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score

from models.booster import (
    FitResult,
    SearchSpace,
    choose_trial,
    fit_booster,
    margin,
    shap_cost,
)

FAST = SearchSpace(max_rounds=80, early_stopping_rounds=10)


def _data(n: int = 1600, n_features: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(
        n_samples=n,
        n_features=n_features,
        n_informative=4,
        weights=[0.7],
        flip_y=0.05,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    X[rng.random(X.shape) < 0.1] = np.nan  # features are NaN by design
    return X, y


NAMES = [f"f{i}" for i in range(8)]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    X, y = _data()
    return X[:1000], y[:1000], X[1000:1300], y[1000:1300], X[1300:], y[1300:]


@pytest.fixture(scope="module")
def fitted(data: tuple[np.ndarray, ...]) -> FitResult:
    Xtr, ytr, Xva, yva, _, _ = data
    return fit_booster(Xtr, ytr, Xva, yva, feature_names=NAMES, search=FAST, n_trials=3, seed=1)


def test_fit_learns_signal_and_trims_to_best_iteration(
    fitted: FitResult, data: tuple[np.ndarray, ...]
) -> None:
    *_, Xte, yte = data
    assert fitted.booster.num_boosted_rounds() == fitted.best_iteration + 1
    # Slicing removes best_iteration, so no predict call can silently use fewer trees.
    assert "best_iteration" not in fitted.booster.attributes()
    assert roc_auc_score(yte, margin(fitted.booster, Xte)) > 0.8
    assert fitted.booster.feature_names == NAMES
    assert fitted.feature_names == tuple(NAMES)


def test_margin_matches_dmatrix_prediction(fitted: FitResult, data: tuple[np.ndarray, ...]) -> None:
    *_, Xte, _ = data
    dmat = xgb.DMatrix(Xte, missing=np.nan, feature_names=NAMES)
    expected = fitted.booster.predict(dmat, output_margin=True)
    got = margin(fitted.booster, Xte)
    assert got.dtype == np.float64 and got.shape == (Xte.shape[0],)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(margin(fitted.booster, Xte[0]), got[:1], atol=1e-6)


def test_trials_table_and_choice(fitted: FitResult) -> None:
    trials = fitted.trials
    assert [t["trial"] for t in trials] == [0, 1, 2]
    assert sum(t["chosen"] for t in trials) == 1
    assert trials[fitted.chosen_trial]["chosen"]
    best = min(t["valid_logloss"] for t in trials)
    assert fitted.valid_logloss <= best + FAST.tie_tolerance
    assert trials[0]["max_depth"] == 3 and trials[0]["eta"] == pytest.approx(0.1)
    for t in trials:
        assert FAST.max_depth[0] <= t["max_depth"] <= FAST.max_depth[1]
        assert FAST.eta[0] <= t["eta"] <= FAST.eta[1]
        assert t["n_trees"] <= FAST.max_rounds
        assert t["shap_cost"] == shap_cost(t["n_trees"], t["max_depth"])
    assert fitted.params["objective"] == "binary:logistic"
    assert fitted.params["tree_method"] == "hist"
    assert fitted.params["max_depth"] == trials[fitted.chosen_trial]["max_depth"]


def test_tie_tolerance_prefers_cheapest_to_explain(data: tuple[np.ndarray, ...]) -> None:
    Xtr, ytr, Xva, yva, _, _ = data
    loose = SearchSpace(max_rounds=60, early_stopping_rounds=10, tie_tolerance=10.0)
    result = fit_booster(Xtr, ytr, Xva, yva, feature_names=NAMES, search=loose, n_trials=4)
    cheapest = min(t["shap_cost"] for t in result.trials)
    assert result.trials[result.chosen_trial]["shap_cost"] == cheapest


def test_shap_budget_caps_rounds_by_depth(data: tuple[np.ndarray, ...]) -> None:
    space = SearchSpace(max_rounds=600, max_shap_cost=48_000)
    assert [space.rounds_for(d) for d in (2, 3, 4, 5)] == [600, 600, 187, 60]
    assert SearchSpace(max_shap_cost=None).rounds_for(5) == 600
    Xtr, ytr, Xva, yva, _, _ = data
    # Depth 4 only, budget for 12 trees, no early stop: every trial is cut by the budget.
    tight = SearchSpace(max_depth=(4, 4), max_shap_cost=12 * 256, early_stopping_rounds=500)
    result = fit_booster(Xtr, ytr, Xva, yva, feature_names=NAMES, search=tight, n_trials=2)
    for t in result.trials:
        assert t["round_cap"] == 12 and t["n_trees"] <= 12
        assert t["shap_cost"] <= tight.max_shap_cost
    assert result.booster.num_boosted_rounds() <= 12
    with pytest.raises(ValueError, match="fewer than 10 trees"):
        SearchSpace(max_depth=(2, 5), max_shap_cost=5_000)


def test_time_budget_stops_new_trials_but_runs_the_first(data: tuple[np.ndarray, ...]) -> None:
    Xtr, ytr, Xva, yva, _, _ = data
    space = SearchSpace(max_rounds=10, early_stopping_rounds=5)
    result = fit_booster(
        Xtr, ytr, Xva, yva, feature_names=NAMES, search=space, n_trials=5, time_budget=0.0
    )
    assert len(result.trials) == 1 and result.chosen_trial == 0


def test_same_seed_same_model(data: tuple[np.ndarray, ...]) -> None:
    Xtr, ytr, Xva, yva, Xte, _ = data
    space = SearchSpace(max_rounds=30, early_stopping_rounds=5)
    a = fit_booster(Xtr, ytr, Xva, yva, feature_names=NAMES, search=space, n_trials=2, seed=4)
    b = fit_booster(Xtr, ytr, Xva, yva, feature_names=NAMES, search=space, n_trials=2, seed=4)
    assert [t["eta"] for t in a.trials] == [t["eta"] for t in b.trials]
    np.testing.assert_array_equal(margin(a.booster, Xte), margin(b.booster, Xte))


def test_progress_is_reported_per_trial(data: tuple[np.ndarray, ...]) -> None:
    Xtr, ytr, Xva, yva, _, _ = data
    calls: list[tuple[int, int]] = []
    space = SearchSpace(max_rounds=10, early_stopping_rounds=5)
    fit_booster(
        Xtr,
        ytr,
        Xva,
        yva,
        feature_names=NAMES,
        search=space,
        n_trials=3,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_sample_weight_changes_the_fit(data: tuple[np.ndarray, ...]) -> None:
    Xtr, ytr, Xva, yva, Xte, _ = data
    space = SearchSpace(max_rounds=30, early_stopping_rounds=5)
    fit = partial(fit_booster, Xtr, ytr, Xva, yva, feature_names=NAMES, search=space, n_trials=1)
    plain = fit()
    weight = np.where(ytr == 1, 5.0, 1.0)
    heavy = fit(sample_weight=weight)
    # Up-weighting dropouts 5x must raise the predicted log-odds on average (~log 5).
    shift = np.mean(margin(heavy.booster, Xte) - margin(plain.booster, Xte))
    assert shift > 0.5
    with pytest.raises(ValueError, match="sample_weight must have one weight per row"):
        fit(sample_weight=weight[:-1])


def test_input_errors_name_rows_and_columns_not_values(data: tuple[np.ndarray, ...]) -> None:
    Xtr, ytr, Xva, yva, _, _ = data
    with pytest.raises(ValueError, match="both classes"):
        fit_booster(Xtr, np.zeros_like(ytr), Xva, yva, feature_names=NAMES, search=FAST)
    bad = Xtr.copy()
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match=r"training set: row 3, column 2 is infinite"):
        fit_booster(bad, ytr, Xva, yva, feature_names=NAMES, search=FAST)
    labels = yva.copy()
    labels[7] = 2
    with pytest.raises(ValueError, match="validation set: label at row 7 is not 0 or 1"):
        fit_booster(Xtr, ytr, Xva, labels, feature_names=NAMES, search=FAST)
    with pytest.raises(ValueError, match="7 feature names"):
        fit_booster(Xtr, ytr, Xva, yva, feature_names=NAMES[:-1], search=FAST)
    with pytest.raises(ValueError, match="unique"):
        fit_booster(Xtr, ytr, Xva, yva, feature_names=["a"] * 8, search=FAST)
    with pytest.raises(ValueError, match="n_trials"):
        fit_booster(Xtr, ytr, Xva, yva, feature_names=NAMES, n_trials=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_depth": (4, 2)}, "max_depth"),
        ({"max_depth": (2, 10)}, "TreeSHAP"),
        ({"eta": (0.0, 0.1)}, "eta"),
        ({"subsample": (0.5, 1.5)}, "at most 1"),
        ({"max_rounds": 0}, "max_rounds"),
        ({"tie_tolerance": -1.0}, "tie_tolerance"),
    ],
)
def test_search_space_rejects_bad_bounds(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchSpace(**kwargs)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    depth=st.tuples(st.integers(1, 8), st.integers(1, 8)).map(sorted),
    eta=st.tuples(st.floats(0.001, 1.0), st.floats(0.001, 1.0)).map(sorted),
)
def test_samples_stay_inside_bounds(seed: int, depth: list[int], eta: list[float]) -> None:
    space = SearchSpace(max_depth=(depth[0], depth[1]), eta=(eta[0], eta[1]), max_shap_cost=None)
    draw = space.sample(np.random.default_rng(seed))
    default = space.default_trial()
    for params in (draw, default):
        assert depth[0] <= params["max_depth"] <= depth[1]
        assert isinstance(params["max_depth"], int)
        assert eta[0] * (1 - 1e-12) <= params["eta"] <= eta[1] * (1 + 1e-12)
        assert 0.6 <= params["subsample"] <= 1.0
        assert 0.5 <= params["lambda"] <= 10.0


class _Sliceable:
    """A stand-in booster: remembers the slice it was trimmed to."""

    def __init__(self, name: str) -> None:
        self.name, self.trimmed = name, None

    def __getitem__(self, key: slice) -> _Sliceable:
        self.trimmed = key.stop
        return self


def test_choose_trial_is_the_one_rule_cheapest_within_the_tie_tolerance() -> None:
    space = SearchSpace(tie_tolerance=0.01)
    rows = [  # trial 1 is best; trial 2 is within the tolerance and cheaper; 3 is cheaper still
        {"trial": 0, **space.default_trial(), "valid_logloss": 0.50, "shap_cost": 10,
         "best_iteration": 9, "chosen": False},
        {"trial": 1, **space.default_trial(), "valid_logloss": 0.40, "shap_cost": 500,
         "best_iteration": 99, "chosen": False},
        {"trial": 2, **space.default_trial(), "valid_logloss": 0.405, "shap_cost": 200,
         "best_iteration": 49, "chosen": False},
        {"trial": 3, **space.default_trial(), "valid_logloss": 0.42, "shap_cost": 5,
         "best_iteration": 4, "chosen": False},
    ]  # fmt: skip
    boosters = [_Sliceable(str(i)) for i in range(4)]
    result = choose_trial(rows, boosters, {"nthread": 1}, space, ["a", "b"])  # type: ignore[arg-type]
    assert result.chosen_trial == 2 and [t["chosen"] for t in result.trials] == [0, 0, 1, 0]
    assert result.booster is boosters[2] and boosters[2].trimmed == 50
    assert result.best_iteration == 49 and result.valid_logloss == 0.405
    assert result.params["nthread"] == 1 and result.feature_names == ("a", "b")
