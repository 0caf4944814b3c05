"""Registered versions loaded the way the service loads them, for tests that drive the store's
rescoring directly (without a server)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

import mlflow

from models.pyfunc import load_scorer
from service.model_store import LoadedModel
from tests.service.conftest import MODEL_NAME


@contextlib.contextmanager
def loaded_versions(uri: str, *versions: str) -> Iterator[dict[str, LoadedModel]]:
    """``{version: LoadedModel}`` of the registry at ``uri``; MLflow points at it meanwhile
    (the loaded models read nothing more from it) and at what it pointed at before, after."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield {
            v: LoadedModel(
                load_scorer(f"models:/{MODEL_NAME}/{v}"), MODEL_NAME, v, None, datetime.now(UTC)
            )  # fmt: skip
            for v in versions
        }
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
