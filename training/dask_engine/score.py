"""Batch scoring on the Dask engine: each client partition through the one scorer, written as
a Parquet dataset folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pandas as pd

from features.profiles import get_profile
from models.scorer import Scorer
from training.dask_engine.partitions import CheckedPart, check_partitions
from training.scoring import COLUMNS, CohortScores, score_tables

if TYPE_CHECKING:
    from distributed import Client


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaskScores:
    """What :func:`score_dask` wrote: ``rows`` scored clients in ``files`` (one Parquet file per
    client partition), ``bands`` counts per risk band, and ``totals``: the clients left out,
    summed over the partitions (its ``frame`` is empty: the rows are in ``files``)."""

    files: tuple[Path, ...]
    rows: int
    bands: dict[str, int]
    totals: CohortScores


_COUNTS: Final = ("no_appointments", "not_at_landmark", "refused", "skipped_ended")


def _score_part(
    part: CheckedPart, scorer: Scorer, profile: str, path: Path, options: dict[str, Any]
) -> dict[str, Any]:
    """Score one client partition, write its rows to ``path``, return the counts."""
    scored: CohortScores = score_tables(
        scorer, part.sessions, part.clients, get_profile(profile), **options
    )
    scored.frame.to_parquet(path, index=False)
    return {
        "rows": len(scored.frame),
        "bands": scored.frame["risk_band"].value_counts().to_dict(),
        **{k: int(getattr(scored, k)) for k in _COUNTS},
    }


def score_dask(
    client: Client,
    scorer: Scorer,
    sessions_path: str | Path,
    clients_path: str | Path,
    out: str | Path,
    *,
    model_name: str,
    model_version: str,
    profile: str | None = None,
    landmark: int | None = None,
    include_ended: bool = False,
    npartitions: int | None = None,
) -> DaskScores:
    """Score every client partition with :func:`training.scoring.score_tables` (the one scorer)
    and write the rows as a Parquet dataset folder ``out``: ``part.<i>.parquet``, one per
    partition, each sorted by ``client_id``, with the pandas engine's columns. Earlier
    ``part.*.parquet`` files in ``out`` are removed first.

    The workers write the files, so ``out`` must be a folder they can all reach (on one
    machine, any local folder).
    """
    from dask import delayed

    parts, prof, _ = check_partitions(
        client, sessions_path, clients_path, profile=profile, npartitions=npartitions
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part.*.parquet"):
        old.unlink()
    remote = client.scatter(scorer, broadcast=True)
    options = {"model_name": model_name, "model_version": model_version,
               "landmark": landmark, "include_ended": include_ended}  # fmt: skip
    files = tuple(out / f"part.{i}.parquet" for i in range(len(parts)))
    results = client.gather(client.compute([
        delayed(_score_part)(p, remote, prof.name, f, options)
        for p, f in zip(parts, files, strict=True)
    ]))  # fmt: skip
    bands: dict[str, int] = {}
    for r in results:
        for band, k in r["bands"].items():
            bands[str(band)] = bands.get(str(band), 0) + int(k)
    totals = CohortScores(
        frame=pd.DataFrame(columns=list(COLUMNS)),
        model_name=model_name,
        model_version=model_version,
        **{k: sum(r[k] for r in results) for k in _COUNTS},
    )
    return DaskScores(files=files, rows=sum(r["rows"] for r in results), bands=bands,
                      totals=totals)  # fmt: skip
