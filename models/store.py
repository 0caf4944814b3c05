"""Where the MLflow tracking store and model registry live (shared by training and service).

The embedded default is an SQLite-backed store under ``<project root>/.mlflow/`` with artifacts
in ``<project root>/.mlflow/artifacts``; ``MLFLOW_TRACKING_URI`` overrides it (for example
``http://127.0.0.1:5000`` for a tracking server with a PostgreSQL backend store). The project
root never depends on where a command happens to run from outside a checkout (see
:func:`project_root`), so ``train`` and ``score`` run from two folders share one store. Pure path
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


#: Where this package's code lives; inside a checkout (editable install) its root is above.
_PACKAGE_DIR = Path(__file__).resolve().parent
#: Data folder name under the per-user data directory.
USER_DIRNAME = "alliance-risk"


def user_data_dir() -> Path:
    """Per-user data folder: ``$XDG_DATA_HOME/alliance-risk``, default
    ``~/.local/share/alliance-risk`` (the XDG base directory convention)."""
    base = os.environ.get("XDG_DATA_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".local" / "share") / USER_DIRNAME


def _find_project(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` whose pyproject names alliance-risk."""
    here = start.resolve()
    for candidate in (here, *here.parents):
        try:
            text = (candidate / "pyproject.toml").read_text(encoding="utf-8")
        except OSError:
            continue
        if _PROJECT_NAME.search(text):
            return candidate
    return None


def project_root(start: Path | None = None) -> Path:
    """The project folder: home of the embedded store (``.mlflow/``), audit log and dev keys.

    With ``start``: the nearest directory at or above it holding this project's pyproject, else
    ``start`` itself. Without: the checkout around the current directory; else the checkout
    this code is installed from (an editable install); else :func:`user_data_dir`. Outside a
    checkout the answer never depends on the current directory, so commands run from different
    folders share one store (a fresh store per folder would hide the registered model).
    """
    if start is not None:
        return _find_project(start) or start.resolve()
    return _find_project(Path.cwd()) or _find_project(_PACKAGE_DIR) or user_data_dir()


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
