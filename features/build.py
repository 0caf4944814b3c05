"""Landmark feature frames: the pandas face of :mod:`features.kernels`.

``build_features`` reads the frames as episodes (:class:`~features.episodes.Episodes`), refuses
them if they break the data contract, packs them once (:func:`pack_frames`, which training uses
too), chooses the landmark rows, and lets the numpy core compute every registry column. The result
for a client depends only on that client's rows, so the function can run per client partition.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.arrays import SessionArrays
from features.contract import CLIENT_ID, COMPLETED, DROPOUT, INTAKE_DATE, OUTCOME
from features.episodes import Episodes
from features.kernels import compute_feature_matrix
from features.profiles import InstrumentProfile
from features.registry import FeatureRegistry, feature_registry
from features.validation import (
    DUPLICATE_CLIENT,
    EMPTY_ID,
    UNKNOWN_CLIENT,
    contract_violations,
    empty_episodes,
)

Landmarks = Literal["all", "latest", "training"] | int

#: Index level names of every feature frame.
INDEX_NAMES = (CLIENT_ID, "landmark")
#: Name of the label series returned by :func:`landmark_labels`.
LABEL_NAME = "dropout"


def pack_frames(
    sessions: pd.DataFrame, clients: pd.DataFrame, profile: InstrumentProfile
) -> SessionArrays:
    """Check the frames against the data contract and pack every client that has sessions.

    Parameters
    ----------
    sessions, clients
        As for :func:`build_features`.
    profile
        Instrument profile naming the rating columns.

    Returns
    -------
    SessionArrays
        One segment per client with at least one session; ``client_id`` holds the real client
        ids and ``client_rank`` their sorted order; ``outcome`` comes from ``clients``.

    Raises
    ------
    ValueError
        On a missing column, a session whose client is not in ``clients``, a duplicated client,
        or a broken contract rule (:func:`features.validation.contract_violations`: duplicated
        session number, missing date, unknown attendance code, ...). The message names the
        first problem's table, row position, column and reason, never a value.
    """
    if INTAKE_DATE not in clients.columns:
        raise ValueError(f"clients: missing column {INTAKE_DATE!r}")
    episodes = Episodes.from_frames(sessions, clients, profile)
    _refuse_problems(episodes, clients)
    # Positions in client id order: pack makes each segment's client_id its position here, so
    # client_rank ranks the real ids, the order of every output.
    positions = np.flatnonzero(~empty_episodes(episodes))
    positions = positions[np.argsort(episodes.client_id[positions], kind="stable")]
    arrays = episodes.pack(positions)
    return replace(arrays, client_id=episodes.client_id[positions[arrays.client_rank]])


def _refuse_problems(episodes: Episodes, clients: pd.DataFrame) -> None:
    """Raise a ValueError naming the first problem: sessions before clients, then by row."""
    missing_id = episodes.episode < 0
    # Episodes.from_frames numbers the ids of clients first, then those only in sessions.
    unknown = episodes.episode >= clients[CLIENT_ID].nunique()
    first: list[tuple[str, int, str, str]] = [
        (table, int(np.argmax(mask)), CLIENT_ID, reason)
        for table, mask, reason in (
            ("sessions", missing_id, EMPTY_ID),
            ("sessions", unknown, UNKNOWN_CLIENT),
            ("clients", clients[CLIENT_ID].duplicated().to_numpy(), DUPLICATE_CLIENT),
        )
        if mask.any()
    ]
    first += [
        ("sessions", int(v.appointments[0]), v.column, v.reason)
        for v in contract_violations(episodes)
    ]
    if first:
        table, row, column, reason = min(first, key=lambda p: (p[0] == "clients", p[1]))
        raise ValueError(f"{table} row {row}, column {column!r}: {reason}")


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
        ``"training"``: the same rows as ``"all"``, whatever the outcome: the population the
        model is trained, evaluated and monitored on is every client at every appointment up to
        ``k_max`` they reached, an ended episode's last appointment included, because that is
        what serving scores (``score --landmark k`` and the API cannot know that an appointment
        is a client's last; for a dropout it is the visit that most needs a flag). Leaving the
        last one out would condition on the future. Callers drop unlabelled (ongoing) clients.
        ``"latest"``: each client's last appointment, not capped by ``k_max``.
        An int ``k``: the appointment numbered ``k``, for clients who have one.
    k_max
        Largest landmark for ``"all"`` and ``"training"``.
    """
    sn = arrays.session_number
    if landmarks == "latest":
        rows = (arrays.offsets[1:] - 1)[arrays.lengths > 0]
    elif landmarks in ("all", "training"):
        rows = np.flatnonzero(sn <= k_max)
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
        Normalised appointments, any row order: ``client_id``, ``session_number`` (int 1 to
        ``SESSION_NUMBER_MAX``, unique per client), ``session_date`` (datetime64),
        ``attendance`` (code) and the profile's ``alliance_<element>`` columns (float on the
        profile's scale, NaN = not rated; rated only when attended).
    clients
        ``client_id`` (unique, every client of ``sessions``), ``intake_date`` (datetime64);
        ``outcome`` for ``"training"`` landmarks; ``age`` (years) for covariates.
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

    Raises
    ------
    ValueError
        When the frames break the data contract; see :func:`pack_frames`.
    """
    registry = feature_registry(profile, include_covariates=include_covariates)
    arrays = pack_frames(sessions, clients, profile)
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
