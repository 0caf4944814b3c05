"""Where the MLflow tracking store and model registry live (shared by training and service).

The embedded default is an SQLite-backed store under ``<project root>/.mlflow/`` with artifacts
in ``<project root>/.mlflow/artifacts``; ``MLFLOW_TRACKING_URI`` overrides it (for example
``http://127.0.0.1:5000`` for a tracking server with a PostgreSQL backend store). Pure path
logic: nothing here creates directories or talks to MLflow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

#: Environment variable that overrides the embedded store (MLflow's own name for it).
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: Directory of the embedded store, relative to the project root.
STORE_DIRNAME = ".mlflow"

_PROJECT_NAME = re.compile(r"""^\s*name\s*=\s*["']alliance-risk["']""", re.MULTILINE)


def project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding this project's pyproject.

    Falls back to ``start`` itself when no ``pyproject.toml`` naming ``alliance-risk`` is found,
    so an installed package used from any directory still gets a predictable store location.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        pyproject = candidate / "pyproject.toml"
        try:
            text = pyproject.read_text(encoding="utf-8")
        except OSError:
            continue
        if _PROJECT_NAME.search(text):
            return candidate
    return here


def _root(root: Path | None) -> Path:
    return root.resolve() if root is not None else project_root()


def default_tracking_uri(root: Path | None = None) -> str:
    """The embedded store's URI: ``sqlite:///<root>/.mlflow/mlflow.db`` (absolute path)."""
    return "sqlite:///" + (_root(root) / STORE_DIRNAME / "mlflow.db").as_posix()


def tracking_uri(project_root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set and non-empty, else the embedded SQLite store's URI."""
    override = os.environ.get(TRACKING_URI_ENV, "").strip()
    return override or default_tracking_uri(project_root)


def artifact_location(project_root: Path | None = None) -> str:
    """File URI of the embedded store's artifact directory, ``<root>/.mlflow/artifacts``."""
    return (_root(project_root) / STORE_DIRNAME / "artifacts").as_uri()


def is_server_uri(uri: str) -> bool:
    """True when ``uri`` points at a tracking server, which then decides the artifact store."""
    return urlparse(uri).scheme.lower() in {"http", "https", "databricks", "databricks-uc"}
