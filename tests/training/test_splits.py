"""Client-level splits: disjoint, temporal, never splitting a client."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.splits import split_clients


def _clients(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "client_id": [f"C{i:05d}" for i in range(n)],
            "intake_date": pd.Timestamp("2024-01-01")
            + pd.to_timedelta(rng.integers(0, 700, n), unit="D"),
            "outcome": rng.choice(["completed", "dropout", "ongoing"], n, p=[0.6, 0.3, 0.1]),
        }
    )


def test_splits_are_disjoint_cover_labelled_clients_and_skip_ongoing() -> None:
    clients = _clients()
    s = split_clients(clients, seed=1)
    parts = [s.train, s.valid, s.calibration, s.test]
    union = np.concatenate(parts)
    assert len(union) == len(set(union.tolist()))
    labelled = set(clients.loc[clients["outcome"] != "ongoing", "client_id"])
    assert set(union.tolist()) == labelled


def test_temporal_test_set_holds_the_latest_intakes() -> None:
    clients = _clients()
    s = split_clients(clients, strategy="temporal", test_fraction=0.2)
    dates = clients.set_index("client_id")["intake_date"]
    assert dates[s.test].min() == s.test_from
    assert dates[np.concatenate([s.train, s.valid, s.calibration])].max() < s.test_from
    labelled = (clients["outcome"] != "ongoing").sum()
    assert s.sizes()["test"] == pytest.approx(0.2 * labelled, rel=0.1)


def test_random_split_is_seeded_and_sized() -> None:
    clients = _clients()
    a = split_clients(clients, strategy="random", seed=3)
    b = split_clients(clients, strategy="random", seed=3)
    c = split_clients(clients, strategy="random", seed=4)
    np.testing.assert_array_equal(a.test, b.test)
    assert set(a.test.tolist()) != set(c.test.tolist())
    assert a.test_from is None


def test_of_maps_ids_to_split_names() -> None:
    s = split_clients(_clients(), seed=0)
    names = s.of(np.array([s.train[0], s.test[0], "nobody"], dtype=object))
    assert names.tolist() == ["train", "test", ""]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"calibration_fraction": 0.6, "valid_fraction": 0.5}, "leave clients to train"),
        ({"strategy": "alphabetical"}, "strategy"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        split_clients(_clients(), **kwargs)


def test_too_few_clients_names_the_empty_split() -> None:
    with pytest.raises(ValueError, match="too few labelled clients"):
        split_clients(_clients(3))


@pytest.mark.parametrize("strategy", ["temporal", "random"])
def test_row_order_does_not_change_the_splits(strategy) -> None:
    # The Dask engine gathers clients partition by partition: same clients, another order.
    clients = _clients()
    shuffled = clients.sample(frac=1.0, random_state=3).reset_index(drop=True)
    a = split_clients(clients, strategy=strategy, seed=2)
    b = split_clients(shuffled, strategy=strategy, seed=2)
    for name in ("train", "valid", "calibration", "test"):
        assert sorted(getattr(a, name)) == sorted(getattr(b, name)), name
