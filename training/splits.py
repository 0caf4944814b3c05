"""Client-level splits: temporal test holdout, calibration and early-stopping validation sets.

Every split is by client, so no client's landmarks appear in two splits (landmark rows of one
client are strongly correlated; splitting rows would leak).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from features.contract import CLIENT_ID, COMPLETED, DROPOUT, INTAKE_DATE, OUTCOME

SplitStrategy = Literal["temporal", "random"]
SPLIT_NAMES = ("train", "valid", "calibration", "test")


@dataclass(frozen=True)
class Splits:
    """Client ids of each split (object arrays) and how they were made.

    ``train`` fits the booster, ``valid`` early-stops it and ranks the hyperparameter trials,
    ``calibration`` fits the calibration map and the risk bands (never used for fitting the
    booster), ``test`` is only ever evaluated on. ``test_from`` is the first intake date of the
    temporal holdout (None for random splits).
    """

    train: np.ndarray
    valid: np.ndarray
    calibration: np.ndarray
    test: np.ndarray
    strategy: SplitStrategy
    test_from: pd.Timestamp | None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for name in SPLIT_NAMES:
            ids = set(getattr(self, name).tolist())
            if seen & ids:
                raise AssertionError(f"a client is in split {name!r} and in an earlier split")
            seen |= ids

    def of(self, client_ids: np.ndarray | pd.Index) -> np.ndarray:
        """Split name per client id (object array; ``""`` for clients in no split)."""
        lookup = {cid: name for name in SPLIT_NAMES for cid in getattr(self, name).tolist()}
        return np.array([lookup.get(c, "") for c in np.asarray(client_ids).tolist()], dtype=object)

    def sizes(self) -> dict[str, int]:
        return {name: int(getattr(self, name).shape[0]) for name in SPLIT_NAMES}


def split_clients(
    clients: pd.DataFrame,
    *,
    strategy: SplitStrategy = "temporal",
    test_fraction: float = 0.20,
    calibration_fraction: float = 0.20,
    valid_fraction: float = 0.15,
    seed: int = 0,
) -> Splits:
    """Split the labelled clients (outcome completed or dropout) into four disjoint sets.

    Parameters
    ----------
    clients
        Normalised clients table: ``client_id``, ``intake_date``, ``outcome``. Ongoing clients
        (no label) are in no split.
    strategy
        ``"temporal"``: the latest ``test_fraction`` of intakes form the test set (clients
        whose intake is on or after that date quantile), mimicking deployment on future
        clients. ``"random"``: a seeded random ``test_fraction`` of clients.
    test_fraction, calibration_fraction, valid_fraction
        ``calibration_fraction`` and ``valid_fraction`` are shares of the clients left after
        the test set; calibration and validation clients are drawn at random (seeded).

    Raises
    ------
    ValueError
        If fractions are out of range or any split would be empty.
    """
    for name, frac in (
        ("test_fraction", test_fraction),
        ("calibration_fraction", calibration_fraction),
        ("valid_fraction", valid_fraction),
    ):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (exclusive)")
    if calibration_fraction + valid_fraction >= 1.0:
        raise ValueError("calibration_fraction + valid_fraction must leave clients to train on")
    labelled = clients.loc[clients[OUTCOME].isin([COMPLETED, DROPOUT]), [CLIENT_ID, INTAKE_DATE]]
    # In client id order, so the splits do not depend on row order (the Dask engine gathers
    # the clients partition by partition and must draw the same splits).
    labelled = labelled.sort_values(CLIENT_ID, kind="stable")
    ids = labelled[CLIENT_ID].to_numpy(dtype=object)
    rng = np.random.default_rng(seed)
    test_from: pd.Timestamp | None = None
    if strategy == "temporal":
        dates = pd.to_datetime(labelled[INTAKE_DATE])
        if dates.isna().any():
            raise ValueError("a temporal split needs every labelled client's intake_date")
        test_from = pd.Timestamp(dates.quantile(1.0 - test_fraction, interpolation="higher"))
        is_test = (dates >= test_from).to_numpy()
    elif strategy == "random":
        is_test = np.zeros(ids.shape[0], dtype=bool)
        is_test[rng.permutation(ids.shape[0])[: round(test_fraction * ids.shape[0])]] = True
    else:
        raise ValueError("strategy must be 'temporal' or 'random'")
    rest = ids[~is_test]
    rest = rest[rng.permutation(rest.shape[0])]
    n_cal = round(calibration_fraction * rest.shape[0])
    n_valid = round(valid_fraction * rest.shape[0])
    splits = Splits(
        train=rest[n_cal + n_valid :],
        valid=rest[n_cal : n_cal + n_valid],
        calibration=rest[:n_cal],
        test=ids[is_test],
        strategy=strategy,
        test_from=test_from,
    )
    empty = [name for name, n in splits.sizes().items() if n == 0]
    if empty:
        raise ValueError(
            f"too few labelled clients ({ids.shape[0]}) to split: empty {', '.join(empty)}"
        )
    return splits
