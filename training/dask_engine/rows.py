"""Client rows on the Dask engine's workers: the landmark rows of each client partition (the
pandas engine's :func:`training.landmarks.landmark_set`), the fit matrices the booster, the
cross-fit and the censoring weights read, and the deterministic sample of whole clients the
driver gathers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from features.build import pack_frames
from features.contract import CLIENT_ID
from features.registry import FeatureRegistry
from training.censoring import CensoringWeights
from training.dask_engine.partitions import CheckedPart
from training.landmarks import LandmarkSet, landmark_set
from training.splits import Splits

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client


#: Key of the sampling hash (16 bytes), so that the sample is not the partition hash's.
_SAMPLE_KEY: Final = "alliance-sample1"
LABEL: Final = "_label"
WEIGHT: Final = "_weight"
CODE: Final = "_code"
SPLIT: Final = "_split"
PART: Final = "_part"
#: The splits the booster is fitted on (early stopping on ``valid``).
FIT_SPLITS: Final = ("train", "valid")


def sample_clients(ids: np.ndarray | pd.Index, cap: int) -> np.ndarray:
    """At most ``cap`` of ``ids``: every one when there are no more, else the ``cap`` whose
    keyed hash of ``client_id`` (as text) is smallest, in their order in ``ids``.

    Whole clients, and the same clients whatever the row, file or partition order, the run,
    the process or the engine: the hash (:func:`pandas.util.hash_array` with a fixed key)
    depends on the id alone.
    """
    ids = np.asarray(ids, dtype=object)
    if cap < 1:
        raise ValueError("the held-out client cap must be >= 1")
    if len(ids) <= cap:
        return ids
    text = ids.astype(str).astype(object)
    keys = pd.util.hash_array(text, hash_key=_SAMPLE_KEY)
    order = np.lexsort((text, keys))  # ties (a 64-bit collision) broken by the id itself
    return ids[np.sort(order[:cap])]


@dataclass(frozen=True)
class FitFrames:
    """One split's persisted landmark rows on the workers, partition by partition aligned:
    features (float32), label, censoring weight (1.0 when unweighted) and each row's client as
    a code (its position in the gathered client list)."""

    X: dd.DataFrame
    y: dd.Series
    weight: dd.Series
    code: dd.Series


def split_names(splits: Splits, info: list[dict[str, Any]]) -> list[pd.Series]:
    """Per partition: split name by client id (``""``: in no split)."""
    ids = pd.concat([i["clients"][CLIENT_ID] for i in info], ignore_index=True)
    names = pd.Series(splits.of(ids.to_numpy(dtype=object)), index=ids.to_numpy(dtype=object))
    bounds = np.cumsum([0, *(len(i["clients"]) for i in info)])
    return [names.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _split_landmarks(
    part: CheckedPart,
    split_of: pd.Series,
    registry: FeatureRegistry,
    *,
    k_max: int,
    keep: Sequence[str],
) -> tuple[LandmarkSet, np.ndarray] | None:
    """:func:`training.landmarks.landmark_set` of one partition's clients in a split of
    ``keep``, and each row's split name; None when none of them has a session."""
    chosen = split_of[split_of.isin(keep)]
    clients = part.clients[part.clients[CLIENT_ID].isin(chosen.index)]
    sessions = part.sessions[part.sessions[CLIENT_ID].isin(chosen.index)]
    if sessions.empty:
        return None
    data = landmark_set(
        pack_frames(sessions, clients, registry.profile), clients, registry, k_max=k_max
    )
    return data, chosen.reindex(data.client_id).to_numpy(dtype=object)


def partition_landmarks(
    part: CheckedPart,
    split_of: pd.Series,
    registry: FeatureRegistry,
    *,
    k_max: int,
    keep: Sequence[str] = FIT_SPLITS,
    dtype: Any = np.float32,
) -> pd.DataFrame:
    """Landmark rows of one client partition whose client is in a split of ``keep``.

    Columns: the registry's features (``dtype``; xgboost bins float32), ``_label`` (1.0
    dropout), ``_split``, ``client_id`` and ``landmark``. Built by
    :func:`training.landmarks.landmark_set`, the pandas engine's function.
    """
    columns = [*registry.names, LABEL, SPLIT, CLIENT_ID, "landmark"]
    built = _split_landmarks(part, split_of, registry, k_max=k_max, keep=keep)
    if built is None:
        return _empty_landmarks(registry, dtype)
    data, split = built
    frame = pd.DataFrame(data.X.astype(dtype, copy=False), columns=list(registry.names))
    frame[LABEL] = data.y
    frame[SPLIT] = split
    frame[CLIENT_ID] = data.client_id
    frame["landmark"] = data.context["landmark"].to_numpy(np.int64)
    return _typed(frame[columns])


Matrices = tuple[pd.DataFrame, pd.Series, pd.Series, pd.Series]


def partition_matrices(
    part: CheckedPart,
    split_of: pd.Series,
    registry: FeatureRegistry,
    *,
    k_max: int,
    dtype: Any = np.float32,
    weight_of: pd.Series | None = None,
    offset: int = 0,
) -> dict[str, Matrices]:
    """What the fits read of one client partition: per split of :data:`FIT_SPLITS`, the
    features (``dtype``), label, censoring weight and client code of its landmark rows, and
    nothing else.

    The same rows as :func:`partition_landmarks` (the same ``landmark_set`` call), without
    the id, split and landmark columns, so that a worker holds one copy of the features (the
    one ``xgboost.dask`` reads) rather than a whole frame plus the fit's column selections.
    The float64 matrix is dropped as soon as its ``dtype`` copy exists.
    ``weight_of`` (by ``client_id``; :attr:`training.censoring.CensoringWeights.weight`) is
    joined onto the rows as :meth:`~training.censoring.CensoringWeights.of` does (1.0 for a
    client it lacks, and for every row when None); the code is ``offset`` + the client's
    position in ``split_of`` (its position in the driver's client list).
    """
    names = list(registry.names)
    built = _split_landmarks(part, split_of, registry, k_max=k_max, keep=FIT_SPLITS)
    if built is None:
        return {s: _empty_matrix(registry, dtype) for s in FIT_SPLITS}
    data, split = built
    del built
    ids = pd.Index(data.client_id)
    weight = np.ones(len(ids)) if weight_of is None else (
        CensoringWeights(weight_of, {}).of(data.client_id)
    )  # fmt: skip
    code = (split_of.index.get_indexer(ids) + offset).astype(np.int32)
    X, y = data.X.astype(dtype, copy=False), data.y
    del data
    out = {}
    for name in FIT_SPLITS:
        mask = split == name
        out[name] = (pd.DataFrame(X[mask], columns=names), pd.Series(y[mask], name=LABEL),
                     pd.Series(weight[mask], name=WEIGHT), pd.Series(code[mask], name=CODE))  # fmt: skip
    return out


def _empty_matrix(registry: FeatureRegistry, dtype: Any) -> Matrices:
    X = pd.DataFrame({n: np.empty(0, dtype=dtype) for n in registry.names})
    return (X, pd.Series(np.empty(0), name=LABEL), pd.Series(np.empty(0), name=WEIGHT),
            pd.Series(np.empty(0, dtype=np.int32), name=CODE))  # fmt: skip


def fit_frames(
    client: Client,
    parts: list[Any],
    split_names: list[pd.Series],
    registry: FeatureRegistry,
    *,
    k_max: int,
    dtype: Any = np.float32,
    weight: pd.Series | None = None,
) -> dict[str, FitFrames]:
    """Per split of :data:`FIT_SPLITS`, the persisted features, labels, censoring weights
    (``weight`` by ``client_id``, joined per partition) and client codes of every client
    partition (:func:`partition_matrices`): one ``persist`` for all eight collections, so each
    partition's landmark rows are built once and the per-partition result is released as
    soon as its pieces exist."""
    import dask.dataframe as dd
    from dask import delayed

    metas = _empty_matrix(registry, dtype)
    offsets = np.cumsum([0, *(len(n) for n in split_names)])
    pieces = [
        delayed(partition_matrices)(
            p, names, registry, k_max=k_max, dtype=dtype, offset=int(offset),
            weight_of=None if weight is None else weight[weight.index.isin(names.index)],
        )
        for p, names, offset in zip(parts, split_names, offsets[:-1], strict=True)
    ]  # fmt: skip
    lazy = [
        dd.from_delayed([p[name][i] for p in pieces], meta=meta, verify_meta=False)
        for name in FIT_SPLITS
        for i, meta in enumerate(metas)
    ]
    done = client.persist(lazy)
    n = len(metas)
    return {name: FitFrames(*done[n * i : n * (i + 1)]) for i, name in enumerate(FIT_SPLITS)}


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({SPLIT: "str", CLIENT_ID: "str", LABEL: np.float64})


def _empty_landmarks(registry: FeatureRegistry, dtype: Any) -> pd.DataFrame:
    frame = pd.DataFrame({n: np.empty(0, dtype=dtype) for n in registry.names})
    frame[LABEL] = np.empty(0)
    frame[SPLIT] = np.empty(0, dtype=object)
    frame[CLIENT_ID] = np.empty(0, dtype=object)
    frame["landmark"] = np.empty(0, dtype=np.int64)
    return _typed(frame)


def landmark_frame(
    parts: list[Any],
    split_names: list[pd.Series],
    registry: FeatureRegistry,
    *,
    k_max: int,
    keep: Sequence[str] = ("train", "valid"),
    dtype: Any = np.float32,
) -> dd.DataFrame:
    """A dask frame of :func:`partition_landmarks` over every client partition (lazy)."""
    import dask.dataframe as dd
    from dask import delayed

    meta = _empty_landmarks(registry, dtype)
    pieces = [
        delayed(partition_landmarks)(p, names, registry, k_max=k_max, keep=keep, dtype=dtype)
        for p, names in zip(parts, split_names, strict=True)
    ]
    return dd.from_delayed(pieces, meta=meta, verify_meta=False)
