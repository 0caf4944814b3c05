"""Drivers of real (tiny) trained models: they follow the explanation, every profile and
awkward histories give valid sentences, a batch equals each client alone."""

from __future__ import annotations

import numpy as np
import pytest

from features.arrays import SessionArrays
from features.build import landmark_rows, pack_frames
from features.kernels import compute_feature_matrix
from features.profiles import PROFILES, get_profile
from models.drivers import DriverWriter
from models.scorer import Scorer
from tests.features.packing import one_client
from tests.models.drivers.helpers import check_driver, client
from training.pipeline import TrainConfig, train_model
from training.simulate import simulate_cohort


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[Scorer, object]]:
    """A tiny real model per profile, with its simulated cohort."""
    out = {}
    for name in PROFILES:
        cohort = simulate_cohort(600, seed=11, profile=name)
        result = train_model(
            cohort.sessions, cohort.clients, get_profile(name), TrainConfig(n_trials=1, n_boot=0)
        )
        out[name] = (result.scorer, cohort)
    return out


def _score(scorer: Scorer, arrays: SessionArrays, landmarks="latest", top: int = 3):
    """The scorer's explanation of ``arrays`` at ``landmarks``, and its drivers."""
    rows = landmark_rows(arrays, landmarks, scorer.k_max)
    X = compute_feature_matrix(arrays, scorer.registry, rows)
    e = scorer.explain_matrix(X)
    writer = DriverWriter.build(scorer.registry, e.group_names)
    return e, rows, writer.describe(arrays, rows, X, e, top=top)


def _subset(cohort, n: int, profile) -> SessionArrays:
    ids = cohort.clients["client_id"].iloc[:n]
    sessions = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
    clients = cohort.clients[cohort.clients["client_id"].isin(ids)]
    return pack_frames(sessions, clients, profile)


def test_drivers_follow_the_explanation(trained) -> None:
    scorer, cohort = trained["alliance6"]
    arrays = _subset(cohort, 120, scorer.profile)
    e, _, out = _score(scorer, arrays, landmarks="all")
    groups = list(e.group_names)
    rating_groups = set(scorer.registry.rating_groups)
    assert len(out) == e.n_rows
    seen = set()
    for i, drivers in enumerate(out):
        assert 1 <= len(drivers) <= 3
        sizes = [abs(d.contribution) for d in drivers]
        assert sizes == sorted(sizes, reverse=True)
        top = np.sort(np.abs(e.group_contributions[i]))[::-1][: len(drivers)]
        np.testing.assert_allclose(sizes, top)
        for d in drivers:
            assert d.contribution == e.group_contributions[i, groups.index(d.group)]
            assert (d.focus is not None) == (d.group in rating_groups)
            check_driver(d)
            seen.add(d.evidence["fact"])
    assert len(seen) >= 5  # the sentences vary with the history, not one template


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_and_awkward_histories(trained, name: str) -> None:
    scorer, cohort = trained[name]
    profile = scorer.profile
    mid = 0.5 * (profile.scale_min + profile.scale_max)
    clients = [
        client(profile, attendance=["attended"], default=profile.scale_max),
        client(profile, attendance=["no_show"], default=None),
        client(profile, attendance=["attended", "no_show", "attended"], default=None),
        client(profile, ratings={profile.element_names[0]: [profile.scale_max, mid, None]}),
    ]
    for arrays in clients:
        _, _, out = _score(scorer, arrays)
        for d in out[0]:
            check_driver(d)
    _, _, out = _score(scorer, _subset(cohort, 100, profile), landmarks="all")
    for drivers in out:
        for d in drivers:
            check_driver(d)


def test_batch_gives_the_same_drivers_as_each_client_alone(trained) -> None:
    scorer, cohort = trained["alliance6"]
    ids = cohort.clients["client_id"].iloc[:30]
    sessions = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
    clients = cohort.clients[cohort.clients["client_id"].isin(ids)]
    arrays = pack_frames(sessions, clients, scorer.profile)
    _, rows, out = _score(scorer, arrays)
    for i, cid in enumerate(arrays.client_id[arrays.seg_of_row[rows]]):
        s = sessions[sessions["client_id"] == cid]
        one = one_client(
            scorer.profile,
            session_number=s["session_number"].to_numpy(),
            session_date=s["session_date"].to_numpy(),
            attendance=s["attendance"].tolist(),
            ratings=np.vstack([s[c].to_numpy(float) for c in scorer.profile.columns]),
            intake_date=clients.loc[clients["client_id"] == cid, "intake_date"].iloc[0],
        )
        alone = _score(scorer, one)[2][0]
        assert [(d.group, d.text, d.evidence, d.focus, d.direction) for d in alone] == [
            (d.group, d.text, d.evidence, d.focus, d.direction) for d in out[i]
        ]
        assert [d.contribution for d in alone] == pytest.approx(
            [d.contribution for d in out[i]], abs=1e-9
        )
