"""Where runs are tracked, and the provenance every run carries (dataset fingerprint, git commit).

The embedded default is an SQLite-backed MLflow store under ``<project root>/.mlflow/`` with
artifacts in ``<project root>/.mlflow/artifacts``; ``MLFLOW_TRACKING_URI`` overrides it (for
example ``http://127.0.0.1:5000`` for a tracking server with a PostgreSQL backend store).
Outside a checkout the project root is the per-user data folder
(:func:`models.store.project_root`), never the current directory. Artifacts follow the store
(:func:`store_artifact_location`): an SQLite store at ``<dir>/mlflow.db`` keeps them in
``<dir>/artifacts``, wherever the command runs from.

Nothing happens at import time: :func:`configure_mlflow` creates directories and sets the URI
only when it is called.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mlflow import MlflowClient

from models.store import (
    STORE_DIRNAME,
    TRACKING_URI_ENV,
    _root,
    artifact_location,
    default_tracking_uri,
    is_server_uri,
    project_root,
    tracking_uri,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ARTIFACTS_DIRNAME",
    "STORE_DIRNAME",
    "TRACKING_URI_ENV",
    "artifact_location",
    "default_tracking_uri",
    "is_server_uri",
    "project_root",
    "tracking_uri",
]

#: Default MLflow experiment of training/evaluation runs, and default registered model name.
DEFAULT_EXPERIMENT = "alliance-risk"
DEFAULT_MODEL_NAME = "alliance-risk"
#: Run and model-version tag holding :func:`dataset_fingerprint` of the training data.
TAG_DATASET_FINGERPRINT = "dataset.fingerprint"
#: MLflow's own tag for the source commit, shown in the UI's run page.
TAG_GIT_COMMIT = "mlflow.source.git.commit"

_FINGERPRINT_VERSION = "alliance-risk-fingerprint-v1"
#: Artifact folder beside an SQLite store's database file.
ARTIFACTS_DIRNAME = "artifacts"


@dataclass(frozen=True)
class TrackingConfig:
    """The tracking set-up in force after :func:`configure_mlflow`.

    ``artifact_location`` is the file URI new experiments store artifacts under
    (:func:`store_artifact_location`: beside an SQLite database, or the project's for another
    database); ``None`` when a tracking server (``http``/``https``) decides where they go.
    """

    tracking_uri: str
    artifact_location: str | None
    embedded: bool


def configure_mlflow(project_root: Path | None = None, uri: str | None = None) -> TrackingConfig:
    """Point MLflow (tracking and registry) at ``uri``, default :func:`tracking_uri`.

    For the embedded store this creates ``<root>/.mlflow/`` and its ``artifacts/`` directory.
    Calls ``mlflow.set_tracking_uri`` and ``mlflow.set_registry_uri``: process-global state,
    so call it once, from the command that needs tracking.
    """
    import mlflow

    root = _root(project_root)
    resolved = uri or tracking_uri(root)
    embedded = resolved == default_tracking_uri(root)
    if embedded:
        (root / STORE_DIRNAME / "artifacts").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    location = store_artifact_location(resolved, root)
    logger.debug("MLflow tracking store configured (embedded=%s)", embedded)
    return TrackingConfig(tracking_uri=resolved, artifact_location=location, embedded=embedded)


def store_artifact_location(uri: str, project_root: Path | None = None) -> str | None:
    """File URI where new experiments of the store at ``uri`` keep their artifacts.

    - An SQLite store (``sqlite:///<dir>/mlflow.db``, relative paths resolved as SQLite does,
      from the current directory at call time): ``<dir>/artifacts``, beside the database, so
      the store and its artifacts move and are deleted together. The embedded store is the
      case ``<project root>/.mlflow``.
    - A tracking server (``http(s)``) or a file store: ``None``, the store decides.
    - Another database (``postgresql://...``) or in-memory SQLite: ``<project
      root>/.mlflow/artifacts`` (:func:`models.store.artifact_location`), never the current
      directory (MLflow's own default would be ``./mlruns`` relative to it).
    """
    scheme = urlparse(uri).scheme.lower()
    if is_server_uri(uri) or scheme in {"", "file"}:
        return None
    if scheme == "sqlite":
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        if database and database != ":memory:" and not database.startswith("file:"):
            return (Path(database).resolve().parent / ARTIFACTS_DIRNAME).as_uri()
    return artifact_location(project_root)


def ensure_experiment(
    name: str,
    *,
    client: MlflowClient | None = None,
    project_root: Path | None = None,
) -> str:
    """Return the id of experiment ``name``, creating it (or restoring a deleted one) if needed.

    A new experiment stores its artifacts where :func:`store_artifact_location` says (beside an
    SQLite store's database; a server decides its own); MLflow's default for SQLite would be a
    ``mlruns/`` directory relative to whatever the current directory happens to be.

    Parameters
    ----------
    name : str
        Experiment name, non-empty.
    client : MlflowClient, optional
        Defaults to a client on the current tracking URI (see :func:`configure_mlflow`).
    project_root : Path, optional
        Root whose ``.mlflow/artifacts`` is used for a non-SQLite database store; found from
        the cwd by default.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not name.strip():
        raise ValueError("experiment name must not be empty")
    client = client or MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
            logger.info("restored deleted experiment %s", existing.experiment_id)
        return str(existing.experiment_id)
    location = store_artifact_location(client.tracking_uri, project_root)
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException as exc:
        # Another process created it between our lookup and create: use theirs.
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)


def _frame_digest(frame: pd.DataFrame) -> bytes:
    """Header (sorted columns and dtypes, row count) plus the sorted 64-bit row hashes."""
    columns = sorted(frame.columns, key=str)
    ordered = frame.loc[:, columns]
    header = "|".join(f"{c!s}:{ordered[c].dtype}" for c in columns) + f"|rows={len(ordered)}"
    if len(ordered) == 0 or not columns:
        return header.encode()
    row_hashes = pd.util.hash_pandas_object(ordered, index=False).to_numpy(dtype=np.uint64)
    return header.encode() + b"\x00" + np.sort(row_hashes).astype("<u8").tobytes()


def dataset_fingerprint(*frames: pd.DataFrame) -> str:
    """SHA-256 hex digest identifying the data in ``frames``, independent of row and column order.

    Canonical form, per frame in argument order: the column names sorted, each with its dtype,
    and the row count; then one 64-bit hash per row (``pandas.util.hash_pandas_object`` over
    the columns in sorted order, index ignored), sorted. Sorting the row hashes makes the
    fingerprint independent of row order while keeping duplicate rows significant; the index
    is never part of the data. Argument order does matter (sessions then clients is not clients
    then sessions), and so do dtypes: fingerprint the frames after validation, where dtypes are
    fixed by the contract. Row hashes are 64-bit, so two different datasets collide with
    negligible probability at clinic scale; pandas is pinned, so the hash is stable.

    Parameters
    ----------
    *frames : pandas.DataFrame
        At least one frame, e.g. the validated ``sessions`` and ``clients`` tables.

    Returns
    -------
    str
        64 lowercase hex characters.
    """
    if not frames:
        raise ValueError("dataset_fingerprint needs at least one frame")
    digest = hashlib.sha256(_FINGERPRINT_VERSION.encode())
    for position, frame in enumerate(frames):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"argument {position} is a {type(frame).__name__}, not a DataFrame")
        part = _frame_digest(frame)
        # Length-prefix each frame so frame boundaries cannot be shifted between arguments.
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def git_commit(project_root: Path | None = None) -> str | None:
    """The full commit hash checked out at the project root, or ``None`` if there is none.

    ``None`` outside a git work tree, before the first commit, or when git is not installed.
    """
    root = _root(project_root)
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = completed.stdout.strip()
    if completed.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", sha):
        return None
    return sha


def provenance_tags(fingerprint: str, commit: str | None) -> dict[str, str]:
    """Run tags for the dataset fingerprint and, when known, the git commit."""
    tags = {TAG_DATASET_FINGERPRINT: fingerprint}
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    return tags
