"""Parquet dataset folders (as dask or pyarrow write them) read as one table, for both engines."""

from __future__ import annotations

from pathlib import Path

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.training.test_io import write
from training import io as tio


def _cohort(tmp_path: Path) -> tio.LoadedCohort:
    s_csv, c_csv = write(tmp_path)
    return tio.load_cohort(s_csv, c_csv)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("client_id", "session_number") if c in frame.columns]
    return frame.sort_values(keys, ignore_index=True)


def test_dask_and_pyarrow_dataset_folders_load_like_single_files(tmp_path: Path) -> None:
    cohort = _cohort(tmp_path)
    # dask writes part.N.parquet files; pyarrow a hive-partitioned tree (clinic_id=K01/...).
    s_dir, c_dir = tmp_path / "sessions_ds", tmp_path / "clients_ds"
    dd.from_pandas(cohort.sessions, npartitions=2).to_parquet(s_dir, write_index=False)
    pq.write_to_dataset(pa.Table.from_pandas(cohort.clients, preserve_index=False), c_dir,
                        partition_cols=None)  # fmt: skip
    assert len(tio.parquet_parts(s_dir)) == 2
    loaded = tio.load_cohort(s_dir, c_dir)
    pd.testing.assert_frame_equal(_sorted(loaded.sessions), _sorted(cohort.sessions))
    pd.testing.assert_frame_equal(_sorted(loaded.clients), _sorted(cohort.clients))


def test_a_folder_without_parquet_files_is_refused_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "notes.txt").write_text("not data")
    (folder / "_metadata.parquet").write_bytes(b"")  # metadata, not a data part
    with pytest.raises(ValueError, match=r"^export: is a folder with no Parquet files"):
        tio.read_table(folder)
    with pytest.raises(ValueError, match=r"^export: is a folder with no Parquet files"):
        tio.check_parquet_source(folder)


def test_the_dask_engine_source_check_names_csv_and_missing_paths(tmp_path: Path) -> None:
    s_csv, _ = write(tmp_path)
    with pytest.raises(ValueError, match=r"^sessions.csv: the Dask engine reads Parquet only"):
        tio.check_parquet_source(s_csv)
    with pytest.raises(FileNotFoundError, match="no such file"):
        tio.check_parquet_source(tmp_path / "absent.parquet")
    # A folder of CSV exports is not a dataset the Dask engine reads.
    with pytest.raises(ValueError, match="is a folder with no Parquet files"):
        tio.check_parquet_source(tmp_path)


def test_a_corrupt_part_in_a_dataset_is_a_read_error_naming_the_folder(tmp_path: Path) -> None:
    cohort = _cohort(tmp_path)
    folder = tmp_path / "sessions_ds"
    dd.from_pandas(cohort.sessions, npartitions=2).to_parquet(folder, write_index=False)
    tio.parquet_parts(folder)[0].write_bytes(b"PAR1 broken")
    with pytest.raises(ValueError, match=r"^sessions_ds: cannot be read as parquet"):
        tio.read_table(folder)
