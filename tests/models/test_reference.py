"""The reference profile: distribution of scored rows, clinics' typical levels, saved with the
scorer."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from features.episodes import Episodes
from features.validation import normalise_clients, normalise_sessions
from models.reference import (
    DRIFT_LEVELS,
    QUANTILES,
    REFERENCE_FORMAT_VERSION,
    SCORE_BINS,
    ReferenceProfile,
    TypicalLevels,
    distribution_profile,
    drift_bins,
    typical_levels,
)
from models.scorer import REFERENCE_FILE, IncompatibleModelError, Scorer
from tests.models.test_scorer import cohort, scorer  # noqa: F401 (shared fixtures)


def _episodes(cohort) -> Episodes:  # noqa: F811
    return Episodes.from_frames(
        normalise_sessions(cohort.sessions, cohort.profile),
        normalise_clients(cohort.clients),
        cohort.profile,
    )


@pytest.fixture(scope="module")
def scored(scorer, cohort):  # noqa: F811
    return scorer.score(_episodes(cohort), landmarks="training")


def test_feature_quantiles_are_numpys_on_the_scored_rows(scored) -> None:
    profile = distribution_profile(scored)
    registry = scored.scorer.registry
    assert set(profile["features"]) == set(registry.groups)
    assert profile["n_rows"] == scored.n_rows
    for i, f in enumerate(registry.features):
        got = profile["features"][f.group][f.name]
        column = scored.features[:, i]
        finite = column[np.isfinite(column)]
        assert got["missing_share"] == pytest.approx(1 - finite.size / column.size)
        if finite.size:
            np.testing.assert_allclose(got["quantiles"], np.quantile(finite, QUANTILES))
        else:
            assert got["quantiles"] is None
    # Something is missing by design (e.g. slopes at the first landmark): counted, not hidden.
    shares = [v["missing_share"] for g in profile["features"].values() for v in g.values()]
    assert max(shares) > 0


def test_band_and_score_shares_are_the_scorers(scored) -> None:
    profile = distribution_profile(scored)
    bands = scored.scorer.bands.assign(scored.probability)
    assert sum(profile["bands"].values()) == pytest.approx(1.0)
    for band, share in profile["bands"].items():
        assert share == pytest.approx(np.mean(bands == band))
    counts, _ = np.histogram(scored.probability, bins=np.asarray(SCORE_BINS))
    np.testing.assert_allclose(profile["score"]["shares"], counts / scored.n_rows)
    assert sum(profile["score"]["shares"]) == pytest.approx(1.0)
    json.dumps(profile, allow_nan=False)


def test_no_row_is_refused(scorer, cohort) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="at least one scored row"):
        distribution_profile(scorer.score(_episodes(cohort), landmarks=999))


def _rated(profile, clinic_sizes: dict[str | None, int], rating: dict[str | None, float]):
    """One attended appointment numbered 1 per client, trust rated ``rating[clinic]``, the
    other elements unrated; a no-show numbered 2 rated 0 (never counted)."""
    clinics = [c for c, n in clinic_sizes.items() for _ in range(n)]
    n = len(clinics)
    ratings = np.full((len(profile.elements), 2 * n), np.nan)
    ratings[0, 0::2] = [rating[c] for c in clinics]
    ratings[0, 1::2] = 0.0
    return Episodes.from_columns(
        profile,
        client_id=[f"c{i}" for i in range(n)],
        clinic_id=clinics,
        therapist_id=[None] * n,
        intake_day=np.zeros(n),
        age=np.full(n, 30.0),
        episode=np.repeat(np.arange(n), 2),
        session_number=np.tile([1, 2], n),
        day=np.tile([1, 8], n),
        attendance=np.tile([0, 1], n),
        ratings=ratings,
    )


def test_a_clinic_below_the_minimum_falls_back_to_all_clinics(cohort) -> None:  # noqa: F811
    profile = cohort.profile
    trust = profile.elements[0].name
    sizes = {"big": 21, "small": 19, None: 1}
    levels = typical_levels(
        _rated(profile, sizes, {"big": 8.0, "small": 2.0, None: 5.0}), k_max=3, min_clients=20
    )
    assert levels.overall[trust][0] == 8.0  # median of 21 x 8, 19 x 2, 1 x 5
    assert levels.clinics["big"][trust] == (8.0, None, None)
    assert "small" not in levels.clinics  # 19 clients: no level of its own is kept
    assert levels.level("big", trust, 1) == 8.0
    assert levels.level("small", trust, 1) == 8.0
    assert levels.level("never-seen", trust, 1) == 8.0
    assert levels.level(None, trust, 1) == 8.0
    assert levels.level("big", trust, 2) is None  # only no-shows there
    assert levels.level("big", trust, 40) is None  # past k_max: k_max's level (none here)
    # Fewer than the minimum overall: no level at all, not one client's rating.
    few = typical_levels(_rated(profile, {"a": 3}, {"a": 9.0}), k_max=3, min_clients=20)
    assert few.level("a", trust, 1) is None and few.clinics == {}


def test_typical_levels_are_the_medians_of_the_rated_appointments(cohort) -> None:  # noqa: F811
    profile = cohort.profile
    levels = typical_levels(_episodes(cohort), k_max=5, min_clients=1)
    s = normalise_sessions(cohort.sessions, profile)
    s = s.drop(columns="clinic_id").merge(
        cohort.clients[["client_id", "clinic_id"]], on="client_id"
    )
    s = s[(s["attendance"] == "attended") & (s["session_number"] <= 5)]
    for e in profile.element_names:
        col = f"alliance_{e}"
        expected = s.dropna(subset=[col]).groupby(["clinic_id", "session_number"])[col].median()
        for (clinic, k), median in expected.items():
            assert levels.clinics[clinic][e][int(k) - 1] == pytest.approx(median)
        overall = s.dropna(subset=[col]).groupby("session_number")[col].median()
        np.testing.assert_allclose(levels.overall[e], overall.reindex(range(1, 6)).to_numpy())


def test_the_profile_travels_inside_the_saved_scorer(scorer, scored, cohort, tmp_path) -> None:  # noqa: F811
    reference = ReferenceProfile(
        distribution=distribution_profile(scored),
        typical=typical_levels(_episodes(cohort), k_max=scorer.k_max, min_clients=5),
        rows="test rows",
    )
    with_ref = replace(scorer, reference=reference)
    loaded = Scorer.load(with_ref.save(tmp_path / "with"))
    assert loaded.reference is not None
    assert loaded.reference.to_dict() == json.loads(json.dumps(reference.to_dict()))
    assert isinstance(loaded.reference.typical, TypicalLevels)
    # A model saved without one still loads, without one.
    without = Scorer.load(scorer.save(tmp_path / "without"))
    assert without.reference is None and not (tmp_path / "without" / REFERENCE_FILE).exists()
    (tmp_path / "with" / REFERENCE_FILE).write_text('{"format_version": 1}')
    with pytest.raises(IncompatibleModelError, match="reference.json"):
        Scorer.load(tmp_path / "with")


def test_the_saved_profile_is_json_without_client_ids(scorer, scored, cohort) -> None:  # noqa: F811
    reference = ReferenceProfile(
        distribution=distribution_profile(scored),
        typical=typical_levels(_episodes(cohort), k_max=scorer.k_max),
        rows="test rows",
    )
    text = json.dumps(reference.to_dict(), allow_nan=False)
    ids = pd.unique(cohort.clients["client_id"].astype(str))
    assert not any(f'"{c}"' in text for c in ids)


def test_drift_bins_are_the_deciles_and_the_shares_of_the_scored_rows(scored) -> None:
    profile = distribution_profile(scored)
    for i, f in enumerate(scored.scorer.registry.features):
        got = profile["features"][f.group][f.name]
        column = scored.features[:, i]
        finite = column[np.isfinite(column)]
        if finite.size:
            assert got["edges"] == np.unique(np.quantile(finite, DRIFT_LEVELS)).tolist()
        counts = drift_bins(np.asarray(got["edges"]), column)
        np.testing.assert_allclose(got["shares"], counts[:-1] / column.shape[0])
        assert sum(got["shares"]) + got["missing_share"] == pytest.approx(1.0)


def test_each_clinic_with_enough_clients_keeps_its_own_shares_in_the_pooled_bins(scored) -> None:
    clinic = np.asarray(scored.episodes.clinic_id, dtype=object)[scored.episode]
    clients = {c: np.unique(scored.episode[clinic == c]).size for c in set(clinic)}
    minimum = sorted(clients.values())[len(clients) // 2]  # about half the clinics qualify
    profile = distribution_profile(scored, clinic_min_clients=minimum)
    kept = profile["clinics"]
    assert set(kept) == {c for c, n in clients.items() if n >= minimum} and 0 < len(kept) < 4
    registry = scored.scorer.registry
    for c, own in kept.items():
        rows = clinic == c
        assert own["n_rows"] == rows.sum() and own["n_clients"] == clients[c]
        for i, f in enumerate(registry.features):
            edges = np.asarray(profile["features"][f.group][f.name]["edges"])
            counts = drift_bins(edges, scored.features[rows, i]) / rows.sum()
            got = own["features"][f.name]
            np.testing.assert_allclose(got["shares"], counts[:-1], atol=1e-5)
            assert got["missing_share"] == pytest.approx(counts[-1], abs=1e-5)
        hist, _ = np.histogram(scored.probability[rows], bins=np.asarray(SCORE_BINS))
        np.testing.assert_allclose(own["score"]["shares"], hist / rows.sum(), atol=1e-5)
        # Size: about ten rounded shares and the name per feature (about 19 kB a clinic here).
        assert len(json.dumps(own)) < 160 * len(registry.features)
    assert distribution_profile(scored, clinic_min_clients=10**6)["clinics"] == {}


def test_format_4_is_written_and_older_formats_still_load(scored) -> None:
    typical = TypicalLevels(k_max=1, min_clients=1, overall={}, clinics={})
    new = ReferenceProfile(distribution=distribution_profile(scored), typical=typical, rows="r")
    assert new.to_dict()["format_version"] == REFERENCE_FORMAT_VERSION == 4
    for version in (1, 2, 3):
        old = {**new.to_dict(), "format_version": version}
        assert ReferenceProfile.from_dict(old).format_version == version
