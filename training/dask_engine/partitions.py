"""Client partitions for the Dask engine: a cluster client, rows grouped by a hash of
``client_id`` (a client's sessions and clients rows in the same partition), each partition
validated on the workers, and what the driver gathers of them."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from features.contract import CLIENT_ID, INTAKE_DATE, OUTCOME, SESSION_DATE, SESSION_NUMBER
from features.profiles import InstrumentProfile, get_profile
from features.validation import validate_and_normalise
from training.io import check_parquet_source, format_problem, parquet_parts
from training.tracking import _FINGERPRINT_VERSION

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client


logger = logging.getLogger(__name__)

#: Workers (1 thread each) of the LocalCluster started when no scheduler is given.
DEFAULT_WORKERS: Final = 2
PART: Final = "_part"


@contextmanager
def dask_client(
    scheduler: str | None = None, *, workers: int = DEFAULT_WORKERS
) -> Iterator[Client]:
    """A client of ``scheduler`` (``tcp://host:port``), or of a LocalCluster on 127.0.0.1 with
    ``workers`` single-threaded worker processes and no dashboard, closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        # Gives up after dask's distributed.comm.timeouts.connect (30 s by default).
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
            processes=True,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


# ---------------------------------------------------------------------------------------------
# Client partitions
# ---------------------------------------------------------------------------------------------


def _with_part(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """``frame`` plus its partition number: a process-independent hash of ``client_id``."""
    ids = frame[CLIENT_ID].astype(str).to_numpy(dtype=object)
    return frame.assign(**{PART: (pd.util.hash_array(ids) % np.uint64(n)).astype(np.int64)})


def _take_part(frame: pd.DataFrame, part: int) -> pd.DataFrame:
    return frame.loc[frame[PART] == part].drop(columns=PART)


def read_parquet(path: str | Path) -> dd.DataFrame:
    """A Parquet file or dataset folder as a dask frame (checked first: see
    :func:`training.io.check_parquet_source`)."""
    import dask.dataframe as dd

    return dd.read_parquet(str(check_parquet_source(path)))


def with_partition_column(frame: dd.DataFrame, n: int) -> dd.DataFrame:
    """``frame`` with the client partition number (0..n-1) of each row (see
    :func:`client_partitions`)."""
    meta = frame._meta.assign(**{PART: pd.Series(dtype=np.int64)})
    return frame.map_partitions(_with_part, n, meta=meta)


#: Most session rows of a client partition by default: one partition's transient copies
#: (validation, the float64 landmark matrix before its float32 copy) then stay near 0.2 GB
#: whatever the dataset's size (150k sessions are about 12,500 clients and 150k landmark
#: rows of 148 features).
PARTITION_SESSIONS: Final = 150_000


def partition_count(workers: int, input_partitions: int, session_rows: int) -> int:
    """4 client partitions per worker, at least 2 per input partition of the sessions, and at
    most :data:`PARTITION_SESSIONS` session rows per partition on average."""
    by_rows = -(-session_rows // PARTITION_SESSIONS)
    return max(4 * max(1, workers), 2 * input_partitions, by_rows)


def parquet_rows(path: str | Path) -> int:
    """Rows of a Parquet file or dataset folder, from the files' footers (no data read)."""
    import pyarrow.parquet as pq

    path = check_parquet_source(path)
    files = parquet_parts(path) if path.is_dir() else [path]
    return sum(int(pq.ParquetFile(f).metadata.num_rows) for f in files)


def default_partitions(client: Client, sessions: dd.DataFrame, session_rows: int = 0) -> int:
    """:func:`partition_count` for ``client``'s workers and the sessions table."""
    workers = len(client.scheduler_info()["workers"])
    return partition_count(workers, sessions.npartitions, session_rows)


def client_partitions(frame: dd.DataFrame, n: int) -> list[Any]:
    """``n`` delayed pandas frames; partition ``i`` holds exactly the rows whose client hashes to
    ``i``, so a client's sessions and clients rows meet in the same partition number.

    Each output is a filter of every input partition: plain tasks, no shuffle service, and the
    rule does not depend on how dask would hash a column.
    """
    from dask import delayed

    pieces = frame.to_delayed()
    return [
        delayed(pd.concat)([delayed(_take_part)(p, i) for p in pieces], ignore_index=True)
        for i in range(n)
    ]


@dataclass(frozen=True)
class CheckedPart:
    """One client partition, validated and normalised, plus what the driver may gather."""

    sessions: pd.DataFrame
    clients: pd.DataFrame
    errors: int
    problems: tuple[str, ...]


def clean_frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    if SESSION_NUMBER in frame.columns:
        frame = frame.astype({SESSION_NUMBER: np.int64})
    return frame


def _check_part(sessions: pd.DataFrame, clients: pd.DataFrame, profile: str) -> CheckedPart:
    """Validate one partition; problems are kept without their row (partition rows mean
    nothing to a person) and, as everywhere, without cell values."""
    checked = validate_and_normalise(sessions, clients, get_profile(profile))
    report = checked.report
    shown = tuple(format_problem(replace(p, row=None)) for p in report.errors[:5])
    return CheckedPart(
        sessions=clean_frame(checked.sessions),
        clients=clean_frame(checked.clients),
        errors=len(report.errors),
        problems=shown,
    )


def _gatherable(part: CheckedPart) -> dict[str, Any]:
    """What the driver gathers of every partition: errors, split inputs, each client's last
    appointment date (its episode's end, for the censoring weights), row hashes, counts."""
    return {
        "errors": part.errors,
        "problems": part.problems,
        "clients": part.clients[[CLIENT_ID, INTAKE_DATE, OUTCOME]],
        "last_session": part.sessions.groupby(CLIENT_ID, sort=False)[SESSION_DATE].max(),
        "n_sessions": len(part.sessions),
        "hashes": (_row_hashes(part.sessions), _row_hashes(part.clients)),
        "dtypes": (_header(part.sessions), _header(part.clients)),
    }


def _row_hashes(frame: pd.DataFrame) -> np.ndarray:
    columns = sorted(frame.columns, key=str)
    return pd.util.hash_pandas_object(frame.loc[:, columns], index=False).to_numpy(np.uint64)


def _header(frame: pd.DataFrame) -> str:
    columns = sorted(frame.columns, key=str)
    return "|".join(f"{c!s}:{frame[c].dtype}" for c in columns)


def whole_fingerprint(headers: Sequence[str], hashes: Sequence[Sequence[np.ndarray]]) -> str:
    """:func:`training.tracking.dataset_fingerprint` of the whole tables from per-partition row
    hashes (the same canonical form: sorted columns with dtypes, row count, sorted hashes)."""
    digest = hashlib.sha256(_FINGERPRINT_VERSION.encode())
    for table, header in enumerate(headers):
        rows = np.sort(np.concatenate([h[table] for h in hashes]))
        part = f"{header}|rows={rows.size}".encode()
        if rows.size and header:
            part += b"\x00" + rows.astype("<u8").tobytes()
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def check_partitions(
    client: Client,
    sessions_path: str | Path,
    clients_path: str | Path,
    *,
    profile: str | None,
    npartitions: int | None = None,
) -> tuple[list[Any], InstrumentProfile, list[dict[str, Any]]]:
    """Read both tables, validate every client partition on the workers (kept there) and
    gather :func:`_gatherable` of each.

    Raises
    ------
    ValueError
        On a table-level problem (missing column, unknown profile) or any row error, with the
        count and the first problems (column and reason, never a value).
    """
    from dask import delayed

    raw_sessions = read_parquet(sessions_path)
    n = npartitions or default_partitions(client, raw_sessions, parquet_rows(sessions_path))
    sessions = with_partition_column(raw_sessions, n)
    clients = with_partition_column(read_parquet(clients_path), n)
    # Table-level checks (columns, profile) on the empty frames dask already knows.
    head = validate_and_normalise(
        sessions._meta.drop(columns=PART),
        clients._meta.drop(columns=PART),
        get_profile(profile) if profile else None,
    ).report
    if head.profile is None or head.table_errors:
        raise ValueError(
            "the tables break the data contract: "
            + "; ".join(format_problem(p) for p in head.table_errors or head.errors)
        )
    parts = [
        delayed(_check_part)(s, c, head.profile.name)
        for s, c in zip(
            client_partitions(sessions, n),
            client_partitions(clients, n),
            strict=True,
        )
    ]
    parts = client.persist(parts)
    info = client.gather(client.compute([delayed(_gatherable)(p) for p in parts]))
    errors = sum(i["errors"] for i in info)
    if errors:
        shown = [p for i in info for p in i["problems"]][:10]
        raise ValueError(
            f"the tables break the data contract: {errors} errors, e.g.\n  "
            + "\n  ".join(shown)
            + "\n(alliance-risk validate lists them all with rows; the Dask engine has no "
            "quarantine mode)"
        )
    return parts, head.profile, info
