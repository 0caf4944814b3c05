"""Concurrent writers to one client leave one consistent history, on SQLite and PostgreSQL.

Two apps on one store stand for two workers (each its own engine and connections); each posts
half of a client's appointments, one at a time, at the same time as the other, both starting
with the client's first post.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select

from service.store.tables import clinic_state, risk_scores, sessions
from tests.service.conftest import TEST_CLINIC, Registry
from tests.service.test_clients_api import a_client, client_fields, same_score, store_app


def _writer(api: TestClient, body: dict[str, Any], mine: list[dict[str, Any]],
            start: threading.Barrier, statuses: list[int]) -> None:  # fmt: skip
    url = f"/v1/clients/{body['client_id']}/sessions"
    start.wait()
    for s in mine:
        # Every post carries the client fields: both writers may be the first.
        response = api.post(url, json={"client": client_fields(body), "sessions": [s]})
        statuses.append(response.status_code)


def _two_writers(registry: Registry, keys: Path, url: str) -> None:
    body = a_client(registry, 1)
    apps = [store_app(registry, keys, url) for _ in range(2)]
    with apps[0] as one, apps[1] as two:
        halves = [body["sessions"][0::2], body["sessions"][1::2]]
        start = threading.Barrier(2)
        statuses: list[list[int]] = [[], []]
        threads = [
            threading.Thread(target=_writer, args=(api, body, half, start, out))
            for api, half, out in zip((one, two), halves, statuses, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert statuses[0] + statuses[1] == [200] * len(body["sessions"])

        stored = one.get(f"/v1/clients/{body['client_id']}/risk", params={"history": True})
        assert stored.json()["sessions_stored"] == len(body["sessions"])
        # The latest score is the score of the whole stored episode.
        same_score(stored.json(), one.post("/v1/risk", json=body).json())
        history = stored.json()["history"]
        assert len(history) == len(body["sessions"])  # one score per acknowledged post

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            n_sessions = conn.execute(select(func.count()).select_from(sessions)).scalar()
            n_scores = conn.execute(select(func.count()).select_from(risk_scores)).scalar()
            version = conn.execute(
                select(clinic_state.c.version).where(clinic_state.c.clinic_id == TEST_CLINIC)
            ).scalar()
    finally:
        engine.dispose()
    assert n_sessions == n_scores == len(body["sessions"])
    assert version == len(body["sessions"])  # every write bumped the clinic once


def test_two_writers_sqlite(registry: Registry, dev_key_dir: Path, tmp_path: Path) -> None:
    _two_writers(registry, dev_key_dir, f"sqlite:///{tmp_path / 'store.db'}")


@pytest.mark.integration
def test_two_writers_postgresql(registry: Registry, dev_key_dir: Path, pg_store_url: str) -> None:
    _two_writers(registry, dev_key_dir, pg_store_url)


def _one_key_at_once(registry: Registry, keys: Path, url: str) -> None:
    """Six posts of one Idempotency-Key and body, three through each of two apps, at once:
    the first is stored and scored, the other five wait for it and replay its answer."""
    body = a_client(registry, 2)
    payload = {"client": client_fields(body), "sessions": body["sessions"][:3]}
    path = f"/v1/clients/{body['client_id']}/sessions"
    apps = [store_app(registry, keys, url) for _ in range(2)]
    with apps[0] as one, apps[1] as two:
        start = threading.Barrier(6)
        answers: list[Any] = []

        def post(api: TestClient) -> None:
            start.wait()
            answers.append(api.post(path, json=payload, headers={"Idempotency-Key": "upload-7"}))

        threads = [threading.Thread(target=post, args=(api,)) for api in (one, two) * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        replayed = [a.headers.get("Idempotent-Replayed") == "true" for a in answers]
        assert sorted(replayed) == [False] + [True] * 5
        assert len({a.json()["scored_at"] for a in answers}) == 1
        history = one.get(f"/v1/clients/{body['client_id']}/risk", params={"history": True})
        assert len(history.json()["history"]) == 1


def test_one_idempotency_key_at_once_sqlite(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    _one_key_at_once(registry, dev_key_dir, f"sqlite:///{tmp_path / 'store.db'}")


@pytest.mark.integration
def test_one_idempotency_key_at_once_postgresql(
    registry: Registry, dev_key_dir: Path, pg_store_url: str
) -> None:
    _one_key_at_once(registry, dev_key_dir, pg_store_url)
