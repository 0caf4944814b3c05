"""Landmark rows for training and evaluation: each labelled client at every appointment
``k <= k_max`` it reached (an ended episode's last appointment included: serving cannot know
an appointment is the last), with its features, label, censoring weight and subgroup context.

Shared by the pandas engine (:mod:`training.pipeline`), the Dask engine and the evaluation
(:mod:`training.evaluation`), so every path builds the same rows from the same feature code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.arrays import SessionArrays
from features.build import landmark_rows
from features.contract import (
    AGE,
    CLIENT_ID,
    CLINIC_ID,
    COMPLETED,
    DROPOUT,
    GENDER,
    OUTCOME_CODES,
    REFERRAL_SOURCE,
    THERAPIST_ID,
)
from features.kernels import compute_feature_matrix
from features.registry import ENGAGEMENT_GROUP, FeatureRegistry

logger = logging.getLogger(__name__)


#: Subgroup columns of the evaluation, in report order. ``therapist_id`` is evaluated per
#: therapist but reported aggregated (see :func:`therapist_summary`).
SUBGROUPS = ("landmark", CLINIC_ID, "age_band", GENDER, REFERRAL_SOURCE)
#: Context column of each row's landmark band (:data:`training.metrics.LANDMARK_BANDS`).
LANDMARK_BAND = "landmark_band"
AGE_BANDS = (0, 25, 40, 60, 200)
AGE_BAND_LABELS = ("<25", "25-39", "40-59", "60+")
UNKNOWN = "unknown"
#: The feature column holding each row's landmark (the calibrator's landmark intercepts).
LANDMARK_FEATURE = f"{ENGAGEMENT_GROUP}_landmark"


def landmark_column(names: Sequence[str]) -> int | None:
    """Index of :data:`LANDMARK_FEATURE` among a registry's ``names`` (None without it)."""
    names = list(names)
    return names.index(LANDMARK_FEATURE) if LANDMARK_FEATURE in names else None


@dataclass(frozen=True)
class LandmarkSet:
    """Feature rows of labelled (client, landmark) pairs with the context to slice them by.

    ``X`` is ``(n_rows, n_features)`` in registry order; ``y`` is 1.0 dropout / 0.0 completed;
    ``context`` has one row per landmark row with ``client_id``, ``landmark``, ``clinic_id``,
    ``therapist_id``, ``age_band``, ``gender``, ``referral_source``; ``weight`` is ``None``
    (unweighted) or one censoring weight per row (:mod:`training.censoring`).
    """

    X: np.ndarray
    y: np.ndarray
    context: pd.DataFrame
    weight: np.ndarray | None = None

    @property
    def client_id(self) -> np.ndarray:
        return self.context[CLIENT_ID].to_numpy(dtype=object)

    def subset(self, client_ids: np.ndarray) -> LandmarkSet:
        # Hash-based membership: np.isin on object arrays sorts and costs minutes at 20k clients.
        mask = self.context[CLIENT_ID].isin(pd.Index(client_ids)).to_numpy()
        return LandmarkSet(
            self.X[mask],
            self.y[mask],
            self.context.loc[mask].reset_index(drop=True),
            None if self.weight is None else self.weight[mask],
        )

    @property
    def n_clients(self) -> int:
        return int(pd.unique(self.client_id).shape[0])


def concat_sets(first: LandmarkSet, second: LandmarkSet) -> LandmarkSet:
    """The rows of both sets, ``first``'s then ``second``'s."""
    weight = None
    if first.weight is not None and second.weight is not None:
        weight = np.concatenate([first.weight, second.weight])
    return LandmarkSet(
        np.vstack([first.X, second.X]),
        np.concatenate([first.y, second.y]),
        pd.concat([first.context, second.context], ignore_index=True),
        weight,
    )


def age_band(age: pd.Series) -> pd.Series:
    """Age in years -> ``<25``, ``25-39``, ``40-59``, ``60+`` or ``unknown``."""
    bands = pd.cut(age, bins=list(AGE_BANDS), labels=list(AGE_BAND_LABELS), right=False)
    return bands.astype(object).where(bands.notna(), UNKNOWN)


def landmark_set(
    arrays: SessionArrays,
    clients: pd.DataFrame,
    registry: FeatureRegistry,
    *,
    k_max: int,
    landmarks: Any = "training",
) -> LandmarkSet:
    """Features and labels of every labelled client's landmarks (ongoing clients left out)."""
    rows = landmark_rows(arrays, landmarks, k_max)
    seg = arrays.seg_of_row[rows]
    labelled = np.isin(arrays.outcome[seg], ENDED_CODES)
    rows, seg = rows[labelled], seg[labelled]
    X = compute_feature_matrix(arrays, registry, rows)
    y = (arrays.outcome[seg] == outcome_code(DROPOUT)).astype(np.float64)
    context = landmark_context(arrays.client_id[seg], arrays.session_number[rows], clients)
    return LandmarkSet(X=X, y=y, context=context)


def landmark_context(ids: np.ndarray, landmark: np.ndarray, clients: pd.DataFrame) -> pd.DataFrame:
    """What evaluation slices landmark rows by: client, landmark, clinic, therapist, age band,
    gender and referral source (``unknown`` when not recorded)."""
    info = clients.set_index(CLIENT_ID)
    info = info.reindex(pd.Index(ids, name=CLIENT_ID))
    return pd.DataFrame(
        {
            CLIENT_ID: ids,
            "landmark": landmark,
            CLINIC_ID: info[CLINIC_ID].to_numpy(dtype=object),
            THERAPIST_ID: info[THERAPIST_ID].to_numpy(dtype=object),
            "age_band": age_band(pd.to_numeric(info[AGE], errors="coerce")).to_numpy(dtype=object),
            GENDER: info[GENDER].astype(object).fillna(UNKNOWN).to_numpy(dtype=object),
            REFERRAL_SOURCE: info[REFERRAL_SOURCE]
            .astype(object)
            .fillna(UNKNOWN)
            .to_numpy(dtype=object),
        }
    )


def outcome_code(outcome: str) -> int:
    return OUTCOME_CODES.index(outcome)


#: Outcome codes of ended episodes, the only ones with a label.
ENDED_CODES = np.array([outcome_code(COMPLETED), outcome_code(DROPOUT)])
