"""Rescoring stored open episodes with a new champion (service.store.rescore) on SQLite and
PostgreSQL: every open episode once, through the one scorer, with its model version; the lease
keeps it to one worker and lets another resume; a newer write is never overwritten."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from models.results import RiskScore
from service.episodes import to_episodes
from service.model_store import LoadedModel
from service.store.db import Store
from service.store.repository import StoredEpisode, episode_request
from service.store.rescore import LEASE, Rescorer
from service.store.tables import clinic_state, episodes, rescore_state, risk_scores
from tests.service.conftest import Registry
from tests.service.models import loaded_versions
from tests.service.test_caseload_support import postgres_store, seed_cohort, sqlite_store

CLINIC = "clinic-rs"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
N = 40


@pytest.fixture(scope="module")
def models(registry_template: Registry) -> Iterator[dict[str, LoadedModel]]:
    with loaded_versions(registry_template.uri, "1", "2") as loaded:
        yield loaded


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path, registry_template: Registry) -> Iterator[Store]:
    if request.param == "sqlite":
        s = sqlite_store(tmp_path)
    else:
        s = postgres_store(request.getfixturevalue("postgres_server"))
    seed_cohort(s, registry_template.cohort, CLINIC, n=N)
    with s.write() as conn:  # two closed episodes are left alone
        conn.execute(update(episodes).where(episodes.c.id.in_([3, 7])).values(outcome="dropout"))
    try:
        yield s
    finally:
        s.close()


def _latest(store: Store) -> dict[int, tuple]:
    e = episodes.c
    with store.read() as conn:
        rows = conn.execute(
            select(
                e.id,
                e.latest_model_version,
                e.latest_probability,
                e.latest_top_driver,
                e.latest_score_id,
            )  # fmt: skip
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _version(store: Store) -> int:
    with store.read() as conn:
        q = select(clinic_state.c.version).where(clinic_state.c.clinic_id == CLINIC)
        return int(conn.execute(q).scalar_one())


def test_rescores_every_open_episode_once_with_the_one_scorer(store, models) -> None:
    before = _version(store)
    done = Rescorer(store, batch_size=16).run(models["2"])
    assert (done.result, done.rescored, done.skipped) == ("done", N - 2, 0)
    latest = _latest(store)
    assert {i for i, row in latest.items() if row[0] == "2"} == set(range(1, N + 1)) - {3, 7}
    assert latest[3][0] is None and latest[7][0] is None
    assert all(row[3] is not None and row[2] is not None for i, row in latest.items()
               if i not in (3, 7))  # fmt: skip
    assert all(row[1] is not None for i, row in latest.items() if i not in (3, 7))
    with store.read() as conn:
        r = risk_scores.c
        history = conn.execute(select(r.episode_id, r.model_version, r.reason, r.probability,
                                      r.id)).all()  # fmt: skip
    assert len(history) == N - 2
    assert {(h.model_version, h.reason) for h in history} == {("2", "rescore")}
    assert {h.id for h in history} == {row[3] for row in latest.values() if row[3] is not None}
    assert _version(store) > before  # the caseload's ETag moves
    # The same probabilities as POST /v1/risk would give: the one scorer path.
    from service.store.rescore import Rescorer as R

    with store.read() as conn:
        requests, _ = R(store, batch_size=N)._read(conn, 0)
    scorer = models["2"].scorer
    scored = scorer.score(to_episodes([q for _, q in requests], scorer.profile).episodes)
    expected = {
        requests[j][0]: s.probability for j, s in scored.by_episode() if isinstance(s, RiskScore)
    }
    assert {i: latest[i][1] for i in expected} == pytest.approx(expected, abs=1e-12)


def test_a_version_done_is_not_redone_and_a_new_one_is(store, models) -> None:
    assert Rescorer(store).run(models["1"]).result == "done"
    again = Rescorer(store).run(models["1"])
    assert (again.result, again.rescored) == ("already_done", 0)
    assert Rescorer(store).run(models["2"]).rescored == N - 2
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(risk_scores)).scalar() == 2 * (N - 2)


def test_one_worker_holds_the_lease_and_another_resumes_after_it_expires(store, models) -> None:
    first = Rescorer(store, batch_size=10, holder="w1", lease_s=600)
    # w1 dies after its first batch (a crash: nothing gives its lease up).
    batch, calls = first._batch, {"n": 0}

    def one_batch_then_die(model, after):
        calls["n"] += 1
        if calls["n"] > 1:
            raise SystemExit("killed")
        return batch(model, after)

    first._batch = one_batch_then_die  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        first.run(models["2"])
    # Its lease has not expired: a second worker does nothing.
    second = Rescorer(store, batch_size=10, holder="w2", lease_s=600)
    assert second.remaining(models["2"]) is None
    assert second.run(models["2"]).result == "held"
    # Once it has expired, the second worker takes over where the first stopped.
    with store.write() as conn:
        expired = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(update(rescore_state).where(rescore_state.c.name == LEASE)
                     .values(lease_until=expired))  # fmt: skip
    assert second.remaining(models["2"]) == N - 2 - 10  # the first batch ended at id 12
    resumed = second.run(models["2"])
    assert (resumed.result, resumed.rescored) == ("done", N - 2 - 10)
    with store.read() as conn:
        per_episode = conn.execute(
            select(risk_scores.c.episode_id, func.count()).group_by(risk_scores.c.episode_id)
        ).all()
    assert len(per_episode) == N - 2 and {n for _, n in per_episode} == {1}


def test_a_stopped_or_superseded_run_gives_its_lease_up_for_the_next_worker(store, models) -> None:
    # A run told to stop (the app closing) or superseded (another version served) leaves
    # after its batch and releases the lease, keeping how far it got: another worker resumes
    # at once, not after the lease runs out.
    first = Rescorer(store, batch_size=10, holder="w1", lease_s=600)
    calls = {"n": 0}

    def current() -> LoadedModel:
        calls["n"] += 1
        return models["2"] if calls["n"] <= 1 else models["1"]

    stopped = first.run(models["2"], current=current)
    assert (stopped.result, stopped.rescored) == ("superseded", 10)
    with store.read() as conn:
        lease = conn.execute(select(rescore_state)).one()
    assert (lease.holder, lease.lease_until, lease.done, lease.after_episode_id) == (
        None, None, False, 12  # ten open episodes: ids 1-12 less 3 and 7
    )  # fmt: skip
    resumed = Rescorer(store, batch_size=10, holder="w2", lease_s=600).run(models["2"])
    assert (resumed.result, resumed.rescored) == ("done", N - 2 - 10)


def test_an_episode_written_meanwhile_keeps_its_newer_score(store, models) -> None:
    rescorer = Rescorer(store, batch_size=N)
    score = rescorer._score

    def score_then_a_new_session_arrives(model, requests):
        out = score(model, requests)
        with store.write() as conn:  # what POST /v1/clients/{id}/sessions does to episode 5
            conn.execute(update(episodes).where(episodes.c.id == 5).values(
                latest_score_id=999_999, latest_model_version="ingest-v",
                updated_at=datetime.now(UTC)))  # fmt: skip
        return out

    rescorer._score = score_then_a_new_session_arrives  # type: ignore[method-assign]
    done = rescorer.run(models["2"])
    assert (done.rescored, done.skipped) == (N - 3, 1)
    assert _latest(store)[5][0] == "ingest-v"


def test_superseded_before_the_first_batch_writes_nothing(store, models) -> None:
    done = Rescorer(store).run(models["2"], current=lambda: models["1"])
    assert (done.result, done.rescored) == ("superseded", 0)
    assert all(row[0] is None for row in _latest(store).values())


def test_a_rescored_episode_is_read_and_explained_as_the_ingest_path_does(store, models) -> None:
    # The batch read rebuilds, through the one repository.episode_requests, the request the
    # client's routes rebuild for one episode (ratings parsed from the stored JSON text, an
    # unrated session without ratings), and the stored explanation is the score's own
    # (RiskScore.to_dict()).
    done = Rescorer(store, batch_size=7).run(models["2"])
    assert done.rescored == N - 2
    scorer = models["2"].scorer
    with store.read() as conn:
        batch, _ = Rescorer(store, batch_size=N)._read(conn, 0)
        rows = conn.execute(select(episodes.c.id, episodes.c.client_id)).all()
        per_client = {
            i: episode_request(conn, StoredEpisode(i, CLINIC, client, None)) for i, client in rows
        }
        reordered = episode_request(conn, StoredEpisode(1, CLINIC, rows[0][1], None), first=[3, 1])
        r = risk_scores.c
        stored = dict(conn.execute(select(r.episode_id, r.explanation)).all())
    assert {i: q.model_dump() for i, q in batch} == {
        i: per_client[i].model_dump() for i, _ in batch
    }
    assert [s["session_number"] for s in reordered.sessions][:3] == [3, 1, 2]
    assert sorted(s["session_number"] for s in reordered.sessions) == [
        s["session_number"] for s in per_client[1].sessions
    ]
    assert any(s.get("ratings") is None for _, q in batch for s in q.sessions)
    scored = scorer.score(to_episodes([q for _, q in batch], scorer.profile).episodes)
    expected = {batch[j][0]: s.to_dict()["explanation"] for j, s in scored.by_episode()}
    assert stored == expected
