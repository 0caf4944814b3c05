"""Drift against the reference profile: PSI, KS and the status of features, groups and score."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from features.profiles import ALLIANCE6
from features.registry import feature_registry
from models.drift import (
    KS_ALERT,
    MIN_CLIENTS,
    MIN_ROWS,
    PSI_ALERT,
    PSI_LEVEL,
    PSI_WATCH,
    Drift,
    DriftCounts,
    drift_report,
    ks_critical,
    psi,
    psi_critical,
    worst_status,
)
from models.reference import ReferenceProfile, TypicalLevels, distribution_profile

REGISTRY = feature_registry(ALLIANCE6)
N_FEATURES = len(REGISTRY.features)


def _draw(n: int, seed: int, *, shift: dict[str, float] | None = None, missing: float = 0.1):
    """Synthetic rows: continuous, integer (ties) and partly missing columns, and a score."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    X[:, ::3] = rng.poisson(2.0, size=(n, X[:, ::3].shape[1]))  # discrete: tied quantiles
    X[:, 1::5][rng.random((n, X[:, 1::5].shape[1])) < missing] = np.nan
    for group, by in (shift or {}).items():
        if group != "score":
            X[:, REGISTRY.index_of_group[group]] += by
    p = 1 / (1 + np.exp(-(-1.5 + 0.8 * rng.normal(size=n) + (shift or {}).get("score", 0.0))))
    return X, p


def _profile(X: np.ndarray, p: np.ndarray, clinic=None, episode=None, **kwargs) -> dict:
    """distribution_profile of rows (one client each unless ``episode`` says otherwise)."""
    bands = np.where(p > 0.5, "high", np.where(p > 0.2, "moderate", "low"))
    episode = np.arange(X.shape[0]) if episode is None else episode
    n_episodes = int(episode.max()) + 1
    clinic_id = np.full(n_episodes, None, dtype=object)
    if clinic is not None:
        clinic_id[episode] = clinic
    scored = SimpleNamespace(
        n_rows=X.shape[0],
        scorer=SimpleNamespace(registry=REGISTRY),
        features=X,
        probability=p,
        risk_band=bands,
        episode=episode,
        episodes=SimpleNamespace(clinic_id=clinic_id),
    )
    return distribution_profile(scored, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    typical = TypicalLevels(k_max=1, min_clients=1, overall={}, clinics={})
    return ReferenceProfile(distribution=_profile(*_draw(5000, 0)), typical=typical, rows="test")


def test_the_same_distribution_drifts_little(reference) -> None:
    report = drift_report(reference, REGISTRY, *_draw(2000, 1))
    assert report.status == "ok"
    assert max(d.psi for d in report.features.values()) < PSI_WATCH / 2
    assert report.score.psi < PSI_WATCH / 2 and report.score.status == "ok"
    assert all(d.n == 2000 for d in report.features.values())
    assert list(report.groups) == list(REGISTRY.groups)
    assert list(report.features) == list(REGISTRY.names)


def test_a_shifted_group_and_score_alert_and_the_others_do_not(reference) -> None:
    group = ALLIANCE6.element_names[0]
    report = drift_report(reference, REGISTRY, *_draw(2000, 2, shift={group: 1.0, "score": 1.0}))
    assert report.groups[group].status == "alert" and report.groups[group].psi >= PSI_ALERT
    assert report.groups[group].ks >= KS_ALERT
    assert report.score.status == "alert"
    assert all(d.status == "ok" for g, d in report.groups.items() if g != group)
    assert report.status == "alert"


def test_a_group_is_its_worst_feature(reference) -> None:
    report = drift_report(reference, REGISTRY, *_draw(1000, 3, shift={"attendance": 0.3}))
    for g, positions in REGISTRY.index_of_group.items():
        members = [report.features[REGISTRY.features[j].name] for j in positions]
        assert report.groups[g].psi == max(d.psi for d in members)
        assert report.groups[g].ks == max(d.ks for d in members)
        assert report.groups[g].status == worst_status(members)


def test_too_few_rows_are_reported_but_not_judged(reference) -> None:
    group = ALLIANCE6.element_names[0]
    report = drift_report(reference, REGISTRY, *_draw(50, 4, shift={group: 3.0}))
    assert report.groups[group].psi > PSI_ALERT  # computed...
    assert report.status == "too_few"  # ...but not judged
    assert all(d.status == "too_few" for d in (report.score, *report.features.values()))
    empty = drift_report(reference, REGISTRY, np.empty((0, N_FEATURES)), np.empty(0))
    assert empty.score.n == 0 and math.isnan(empty.score.psi) and empty.status == "too_few"
    lowered = drift_report(reference, REGISTRY, *_draw(50, 4), min_rows=10)
    assert lowered.score.status != "too_few"


def test_missing_values_are_a_bin_of_their_own(reference) -> None:
    X, p = _draw(2000, 5, missing=0.5)
    report = drift_report(reference, REGISTRY, X, p)
    partly_missing = REGISTRY.names[1]
    assert report.features[partly_missing].status == "alert"
    # Among the values that are there nothing changed: KS compares finite values only.
    assert report.features[partly_missing].ks < 0.05
    assert report.features[REGISTRY.names[0]].status == "ok"


def test_discrete_features_with_tied_quantiles_do_not_drift_by_themselves(reference) -> None:
    report = drift_report(reference, REGISTRY, *_draw(2000, 6))
    discrete = REGISTRY.names[0::3]
    assert max(report.features[f].psi for f in discrete) < PSI_WATCH / 2


def test_every_form_of_the_reference_gives_the_same_report(reference) -> None:
    X, p = _draw(500, 7)
    as_dict = json.loads(json.dumps(reference.to_dict()))
    base = drift_report(reference, REGISTRY, X, p)
    assert drift_report(as_dict, REGISTRY, X, p) == base
    assert drift_report(as_dict["distribution"], REGISTRY, X, p) == base
    loaded = ReferenceProfile.from_dict(as_dict)
    assert drift_report(loaded, REGISTRY, X, p) == base


def test_a_version_1_profile_still_loads_and_judges_from_its_quantiles(reference) -> None:
    old = json.loads(json.dumps(reference.to_dict()))
    old["format_version"] = 1
    for group in old["distribution"]["features"].values():
        for entry in group.values():
            del entry["edges"], entry["shares"]
    loaded = ReferenceProfile.from_dict(old)
    assert loaded.format_version == 1 and loaded.to_dict() == old
    same = drift_report(loaded, REGISTRY, *_draw(2000, 8))
    continuous = [f for i, f in enumerate(REGISTRY.names) if i % 3 and i % 5 != 1]
    assert max(same.features[f].psi for f in continuous) < PSI_WATCH
    group = ALLIANCE6.element_names[0]
    shifted = drift_report(loaded, REGISTRY, *_draw(2000, 8, shift={group: 1.0}))
    assert shifted.groups[group].status == "alert"


def test_psi_and_ks_critical_values() -> None:
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    assert psi(np.array([0.75, 0.25]), np.array([0.5, 0.5])) == pytest.approx(
        0.25 * math.log(1.5) + 0.25 * math.log(2), rel=1e-12
    )
    assert math.isfinite(psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))
    # Kolmogorov: c(0.05) = 1.358.
    assert ks_critical(100, 10**9, level=0.05) == pytest.approx(0.1358, abs=1e-4)
    assert ks_critical(0, 10) == math.inf


def test_worst_status_ignores_too_few_unless_all_are() -> None:
    d = {s: Drift(psi=0.0, ks=0.0, n=MIN_ROWS, status=s) for s in ("ok", "watch", "alert")}
    few = Drift(psi=0.0, ks=0.0, n=1, status="too_few")
    assert worst_status([d["ok"], d["watch"], few]) == "watch"
    assert worst_status([d["alert"], d["watch"]]) == "alert"
    assert worst_status([few]) == "too_few" and worst_status([]) == "too_few"


def test_shapes_and_features_must_match_the_registry(reference) -> None:
    X, p = _draw(10, 9)
    with pytest.raises(ValueError, match="registry order"):
        drift_report(reference, REGISTRY, X[:, 1:], p)
    with pytest.raises(ValueError, match="registry order"):
        drift_report(reference, REGISTRY, X, p[1:])
    other = feature_registry(ALLIANCE6, include_covariates=True)
    with pytest.raises(ValueError, match="no feature"):
        drift_report(reference, other, np.zeros((10, len(other.features))), p)


def _clinics_reference(seed: int = 20) -> dict:
    """Clinic A rates its first element group 0.8 higher than clinic B (their therapists), 1500
    clients each; clinic C has 50 clients, below the minimum for a reference of its own."""
    group = ALLIANCE6.element_names[0]
    Xa, pa = _draw(1500, seed, shift={group: 0.8})
    Xb, pb = _draw(1500, seed + 1)
    Xc, pc = _draw(50, seed + 2)
    clinic = np.array(["A"] * 1500 + ["B"] * 1500 + ["C"] * 50, dtype=object)
    return _profile(np.vstack([Xa, Xb, Xc]), np.r_[pa, pb, pc], clinic=clinic)


def test_a_clinic_is_compared_with_its_own_reference_where_it_has_one() -> None:
    dist = _clinics_reference()
    assert set(dist["clinics"]) == {"A", "B"}  # C: 50 clients < CLINIC_MIN_CLIENTS
    group = ALLIANCE6.element_names[0]
    X, p = _draw(1000, 21, shift={group: 0.8})  # clinic A as it always was
    own = drift_report(dist, REGISTRY, X, p, clinic="A", n_clients=1000)
    assert own.baseline == "clinic" and own.status == "ok", own.groups[group]
    pooled = drift_report(dist, REGISTRY, X, p, n_clients=1000)
    assert pooled.baseline == "pooled" and pooled.groups[group].status in ("watch", "alert")
    # Clinic A drifting for real is still seen against its own reference.
    moved = drift_report(dist, REGISTRY, *_draw(1000, 22), clinic="A", n_clients=1000)
    assert moved.groups[group].status == "alert"
    # No reference of its own (too few clients, unknown clinic): the pooled one, and it says so.
    for clinic in ("C", "nowhere"):
        assert drift_report(dist, REGISTRY, X, p, clinic=clinic).baseline == "pooled"


def test_an_older_profile_without_clinics_compares_every_clinic_with_all(reference) -> None:
    old = json.loads(json.dumps(reference.to_dict()))
    old["format_version"] = 2
    old["distribution"].pop("clinics")
    loaded = ReferenceProfile.from_dict(old)
    X, p = _draw(500, 23)
    report = drift_report(loaded, REGISTRY, X, p, clinic="K01")
    assert report.baseline == "pooled" and report == drift_report(reference, REGISTRY, X, p)


def _repeated(n_clients: int, rows_each: int, seed: int):
    """``n_clients`` independent rows, each repeated ``rows_each`` times (a client's features at
    successive landmarks, the early alliance means being the same value every time)."""
    X, p = _draw(n_clients, seed)
    return np.repeat(X, rows_each, axis=0), np.repeat(p, rows_each)


def test_clients_not_rows_set_the_critical_values_and_too_few(reference) -> None:
    # 150 clients x 20 landmarks from the reference's own distribution: no drift.
    flagged_by_rows = flagged_by_clients = 0
    for seed in range(30, 40):
        X, p = _repeated(150, 20, seed)
        by_rows = drift_report(reference, REGISTRY, X, p)
        by_clients = drift_report(reference, REGISTRY, X, p, n_clients=150, min_clients=100)
        assert by_clients.n_clients == 150 and by_clients.score.n == 3000  # n stays rows
        flagged_by_rows += sum(d.status != "ok" for d in by_rows.features.values())
        flagged_by_clients += sum(d.status != "ok" for d in by_clients.features.values())
    # Counted as 3,000 independent rows, chance differences of 150 clients look like drift
    # (about one feature in ten); counted as clients, chance stays at its level.
    n_judged = 10 * N_FEATURES
    assert flagged_by_rows > 0.05 * n_judged, flagged_by_rows
    assert flagged_by_clients <= 0.005 * n_judged, flagged_by_clients
    # too_few counts clients: 3,000 rows of 150 clients are too few for the default minimum.
    X, p = _repeated(150, 20, 40)
    assert X.shape[0] >= MIN_ROWS and MIN_CLIENTS > 150
    assert drift_report(reference, REGISTRY, X, p, n_clients=150).status == "too_few"
    with pytest.raises(ValueError, match="n_clients"):
        drift_report(reference, REGISTRY, X, p, n_clients=X.shape[0] + 1)


def _in_passes(counts: DriftCounts, X: np.ndarray, p: np.ndarray, sizes: list[int]) -> None:
    """Count ``X``, ``p`` into ``counts`` in consecutive passes of ``sizes`` rows (the rest
    last)."""
    ends = np.cumsum(sizes)
    for rows in np.split(np.arange(X.shape[0]), ends[ends < X.shape[0]]):
        counts.add(X[rows], p[rows])


def test_counts_accumulated_pass_by_pass_give_the_one_shot_report_bit_for_bit(reference) -> None:
    """A window counted a few clients at a time (the service's recomputation) is judged as the
    whole window at once would be: same PSI, KS, n and status, exactly (the counts are
    integers), for the pooled and a clinic's own reference, by rows and by clients."""
    group = ALLIANCE6.element_names[0]
    dist = _clinics_reference()
    cases = [
        (reference, None, _draw(1237, 50), {}),
        (reference, None, _repeated(150, 13, 51), {"n_clients": 150, "min_clients": 100}),
        (reference, None, _draw(900, 52, shift={group: 0.6, "score": 0.7}), {}),
        (dist, "A", _draw(1000, 53, shift={group: 0.8}), {"n_clients": 1000}),
        (dist, "B", _draw(640, 54, shift={group: 0.4}), {"n_clients": 640}),
        (dist, "C", _draw(300, 55), {"min_rows": 100}),  # no reference of its own: pooled
    ]
    for ref, clinic, (X, p), options in cases:
        one_shot = drift_report(ref, REGISTRY, X, p, clinic=clinic, **options)
        for sizes in ([50] * 100, [1, 0, 333, 7], [X.shape[0]]):
            counts = DriftCounts(ref, REGISTRY, clinic=clinic)
            _in_passes(counts, X, p, sizes)
            counted = counts.report(**options)
            assert counts.n_rows == X.shape[0]
            assert counted == one_shot, (clinic, sizes)
            assert [d.psi for d in counted.features.values()] == [
                d.psi for d in one_shot.features.values()
            ]
    # Nothing counted yet: reported, not judged.
    empty = DriftCounts(reference, REGISTRY).report()
    assert empty.status == "too_few" and empty.score.n == 0
    # The same checks as the one-shot report.
    counts = DriftCounts(reference, REGISTRY)
    X, p = _draw(10, 56)
    with pytest.raises(ValueError, match="registry order"):
        counts.add(X[:, 1:], p)
    counts.add(X, p)
    with pytest.raises(ValueError, match="n_clients"):
        counts.report(n_clients=11)
    other = feature_registry(ALLIANCE6, include_covariates=True)
    with pytest.raises(ValueError, match="no feature"):
        DriftCounts(reference, other)


def test_the_psi_critical_value_is_the_chi_squared_quantile() -> None:
    from scipy.stats import chi2  # tests only: models.drift stays numpy and the stdlib

    for bins in (2, 4, 11):
        exact = chi2.ppf(1 - PSI_LEVEL, bins - 1) * (1 / 300 + 1 / 100)
        assert psi_critical(300, 100, bins) == pytest.approx(exact, rel=0.04 if bins == 2 else 0.02)
    assert psi_critical(0, 100, 5) == math.inf
    # Chance alone rarely reaches it: two samples of 200 and 100 from one 10-bin distribution.
    rng = np.random.default_rng(0)
    e = np.full(10, 0.1)
    beyond = [
        psi(rng.multinomial(200, e) / 200, rng.multinomial(100, e) / 100)
        >= psi_critical(200, 100, 10)
        for _ in range(2000)
    ]
    assert np.mean(beyond) < 0.01


def test_a_rare_value_empty_in_a_small_clinic_reference_is_not_drift() -> None:
    # A discrete feature where value 2 is rare (2%): a clinic of 120 clients may have none.
    rng = np.random.default_rng(50)
    X, p = _draw(3000, 50)
    j = 0  # a discrete column (every third one is)
    X[:, j] = rng.choice([0, 1, 2], size=3000, p=[0.8, 0.18, 0.02])
    clinic = np.array(["A"] * 120 + ["B"] * 2880, dtype=object)
    X[:120, j] = np.where(X[:120, j] == 2, 1, X[:120, j])  # none at clinic A, by chance
    dist = _profile(X, p, clinic=clinic)
    assert dist["clinics"]["A"]["features"][REGISTRY.names[j]]["shares"][-1] == 0.0
    new, q = _draw(300, 51)
    new[:, j] = rng.choice([0, 1, 2], size=300, p=[0.8, 0.18, 0.02])
    report = drift_report(dist, REGISTRY, new, q, clinic="A", n_clients=300, min_clients=100)
    assert report.baseline == "clinic"
    assert report.features[REGISTRY.names[j]].status == "ok", report.features[REGISTRY.names[j]]


def test_psi_smoothing_keeps_the_null_exceedance_near_its_level() -> None:
    # The reviewer's case: 5% bins, 200 new and 100 reference clients from one distribution.
    # Flooring an empty bin's share at 1e-4 made P(PSI >= critical) 1.1% instead of 0.1%;
    # half a count added to every bin on both sides keeps it near the nominal level.
    rng = np.random.default_rng(1)
    q = np.array([0.05, 0.05, 0.1, 0.3, 0.5])
    n, m = 200, 100
    crit = psi_critical(n, m, q.size)
    draws = 20000
    hits = sum(
        psi(rng.multinomial(n, q) / n, rng.multinomial(m, q) / m, n=n, m=m) >= crit
        for _ in range(draws)
    )
    assert hits / draws <= 0.003, hits / draws
    # Two new clients of 200 in a bin empty among 100 reference ones: chance, not drift.
    a, e = np.array([0.01, 0.99]), np.array([0.0, 1.0])
    assert 0.0 < psi(a, e, n=200, m=100) < 0.02 < 0.04 < psi(a, e)
    # Without the counts, the shares alone are compared as before (floored).
    assert psi(np.array([0.75, 0.25]), np.array([0.5, 0.5])) == pytest.approx(
        0.25 * math.log(1.5) + 0.25 * math.log(2), rel=1e-12
    )


def _scoreset(X: np.ndarray, p: np.ndarray, clinic: np.ndarray) -> SimpleNamespace:
    """A ScoreSet stand-in of rows of one client each."""
    return SimpleNamespace(
        n_rows=X.shape[0],
        scorer=SimpleNamespace(registry=REGISTRY),
        features=X,
        probability=p,
        risk_band=np.where(p > 0.5, "high", np.where(p > 0.2, "moderate", "low")),
        episode=np.arange(X.shape[0]),
        episodes=SimpleNamespace(clinic_id=clinic),
    )


def test_features_from_every_development_client_give_a_clinic_the_power_to_see_a_shift() -> None:
    # Development clients: 2,000, 400 of them at clinic A; the calibration split (whose
    # out-of-sample scores make the score part) is a quarter of them: 100 at clinic A.
    X, p = _draw(2000, 60)
    clinic = np.array(["A"] * 400 + ["B"] * 1600, dtype=object)
    cal = np.r_[np.arange(0, 400, 4), np.arange(400, 2000, 4)]
    dev, calibration = _scoreset(X, p, clinic), _scoreset(X[cal], p[cal], clinic[cal])
    dist = distribution_profile(dev, scores=calibration)  # type: ignore[arg-type]
    assert dist["n_clients"] == 2000 and dist["score"]["n_clients"] == 500
    assert dist["clinics"]["A"]["n_clients"] == 400
    assert dist["clinics"]["A"]["score"]["n_clients"] == 100
    counts, _ = np.histogram(p[cal], bins=np.asarray(dist["score"]["bins"]))
    np.testing.assert_allclose(dist["score"]["shares"], counts / cal.size)
    band = np.where(p[cal] > 0.5, "high", np.where(p[cal] > 0.2, "moderate", "low"))
    assert dist["bands"]["high"] == pytest.approx(np.mean(band == "high"))
    # Clinic A, 1,000 new clients, one feature shifted by 0.3 SD: watched against 400 reference
    # clients, with a PSI below the critical value of the calibration split's 100 alone.
    j = 2  # a continuous column
    new, q = _draw(1000, 61)
    new[:, j] += 0.3
    seen = drift_report(dist, REGISTRY, new, q, clinic="A", n_clients=1000, min_clients=100)
    assert seen.baseline == "clinic" and seen.features[REGISTRY.names[j]].status == "watch"
    assert PSI_WATCH <= seen.features[REGISTRY.names[j]].psi < psi_critical(1000, 100, 10)
    small = _profile(X[cal], p[cal], clinic=clinic[cal])
    unseen = drift_report(small, REGISTRY, new, q, clinic="A", n_clients=1000, min_clients=100)
    # The score is judged on its own, smaller sample: same statistics as a profile of the
    # calibration rows alone.
    assert seen.score.psi == pytest.approx(unseen.score.psi, abs=1e-4)
    assert seen.score.status == unseen.score.status
