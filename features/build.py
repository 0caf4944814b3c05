"""Landmark feature frames: the pandas face of :mod:`features.kernels`.

``build_features`` sorts and packs the frames once (:class:`~features.arrays.SessionArrays`),
chooses the landmark rows, and lets the numpy core compute every registry column. The result
for a client depends only on that client's rows, so the function can run per client partition.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.arrays import SessionArrays
from features.contract import CLIENT_ID, COMPLETED, DROPOUT, OUTCOME, OUTCOME_CODES
from features.kernels import compute_feature_matrix
from features.profiles import InstrumentProfile
from features.registry import FeatureRegistry, feature_registry

Landmarks = Literal["all", "latest", "training"] | int

#: Index level names of every feature frame.
INDEX_NAMES = (CLIENT_ID, "landmark")
#: Name of the label series returned by :func:`landmark_labels`.
LABEL_NAME = "dropout"

_ENDED = np.array([OUTCOME_CODES.index(COMPLETED), OUTCOME_CODES.index(DROPOUT)], dtype=np.int8)


def landmark_rows(
    arrays: SessionArrays, landmarks: Landmarks = "all", k_max: int = 20
) -> np.ndarray:
    """Row positions in ``arrays`` of the requested landmarks, ordered by (client id, landmark).

    Parameters
    ----------
    arrays
        Packed session arrays.
    landmarks
        ``"all"``: every appointment with ``session_number <= k_max``.
        ``"training"``: as ``"all"``, but for ended episodes (outcome completed or dropout)
        only while the episode is still open, i.e. before the client's last appointment; ongoing
        and unknown outcomes keep every landmark (callers drop ongoing clients from training).
        ``"latest"``: each client's last appointment, not capped by ``k_max``.
        An int ``k``: the appointment numbered ``k``, for clients who have one.
    k_max
        Largest landmark for ``"all"`` and ``"training"``.
    """
    sn = arrays.session_number
    if landmarks == "latest":
        rows = (arrays.offsets[1:] - 1)[arrays.lengths > 0]
    elif landmarks == "all":
        rows = np.flatnonzero(sn <= k_max)
    elif landmarks == "training":
        last = np.zeros(arrays.n_rows, dtype=bool)
        last[(arrays.offsets[1:] - 1)[arrays.lengths > 0]] = True
        ended = np.isin(arrays.outcome, _ENDED)[arrays.seg_of_row]
        rows = np.flatnonzero((sn <= k_max) & ~(ended & last))
    elif (
        isinstance(landmarks, (int, np.integer))
        and not isinstance(landmarks, bool)
        and landmarks >= 1
    ):
        rows = np.flatnonzero(sn == landmarks)
    else:
        raise ValueError("landmarks must be 'all', 'latest', 'training' or an int >= 1")
    if arrays.n_clients > 1:
        order = np.lexsort((sn[rows], arrays.client_rank[arrays.seg_of_row[rows]]))
        rows = rows[order]
    return rows


def build_features(
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    *,
    profile: InstrumentProfile,
    landmarks: Landmarks = "all",
    k_max: int = 20,
    include_covariates: bool = False,
) -> pd.DataFrame:
    """Leakage-free landmark features, one row per (client, landmark).

    Parameters
    ----------
    sessions
        Normalised appointments, any row order: ``client_id``, ``session_number`` (int >= 1,
        unique per client), ``session_date`` (datetime64), ``attendance`` (code) and the
        profile's ``alliance_<element>`` columns (float, NaN = not rated).
    clients
        ``client_id``, ``intake_date`` (datetime64); ``outcome`` for ``"training"``
        landmarks; ``age`` (years) for covariates.
    profile
        Instrument profile (elements, scale, cut-offs).
    landmarks
        Which landmarks; see :func:`landmark_rows`.
    k_max
        Largest landmark for ``"all"`` and ``"training"``.
    include_covariates
        Append the ``client`` group (age, age < 25). Off by default.

    Returns
    -------
    pandas.DataFrame
        Indexed by (``client_id``, ``landmark``), sorted; columns exactly
        ``feature_registry(profile, include_covariates=...).names``, float64.
    """
    registry = feature_registry(profile, include_covariates=include_covariates)
    arrays = SessionArrays.from_frames(sessions, clients, profile)
    rows = landmark_rows(arrays, landmarks, k_max)
    matrix = compute_feature_matrix(arrays, registry, rows)
    return pd.DataFrame(matrix, index=_index(arrays, rows), columns=_columns(registry), copy=False)


def _index(arrays: SessionArrays, rows: np.ndarray) -> pd.MultiIndex:
    """(client_id, landmark) index of ``rows``, built from levels and codes (no re-factorising)."""
    ids = np.empty(arrays.n_clients, dtype=object)
    ids[arrays.client_rank] = arrays.client_id
    client_code = arrays.client_rank[arrays.seg_of_row[rows]]
    landmarks, landmark_code = np.unique(arrays.session_number[rows], return_inverse=True)
    levels: list[Any] = [pd.Index(ids), pd.Index(landmarks)]
    codes: list[Any] = [client_code, landmark_code]
    index = pd.MultiIndex(
        levels=levels,
        codes=codes,
        names=INDEX_NAMES,
        verify_integrity=False,
    )
    if np.unique(client_code).shape[0] < arrays.n_clients:
        index = index.remove_unused_levels()
    return index


@functools.cache
def _columns(registry: FeatureRegistry) -> pd.Index:
    return pd.Index(registry.names)


def landmark_labels(clients: pd.DataFrame, index: pd.MultiIndex) -> pd.Series:
    """Dropout label of every (client, landmark) row: 1.0 dropout, 0.0 completed, NaN ongoing.

    Parameters
    ----------
    clients
        ``client_id`` and ``outcome`` (completed | dropout | ongoing).
    index
        A feature frame's (``client_id``, ``landmark``) index.

    Returns
    -------
    pandas.Series
        float64 named ``dropout``, aligned to ``index``. Clients absent from ``clients`` get NaN.
    """
    code = {DROPOUT: 1.0, COMPLETED: 0.0}
    by_client = pd.Series(
        clients[OUTCOME].map(code).to_numpy(dtype=np.float64, na_value=np.nan),
        index=pd.Index(clients[CLIENT_ID]),
    )
    if by_client.index.has_duplicates:
        raise ValueError(f"clients: duplicate {CLIENT_ID!r}")
    values = by_client.reindex(index.get_level_values(CLIENT_ID)).to_numpy(dtype=np.float64)
    return pd.Series(values, index=index, name=LABEL_NAME)
