"""What-if scenarios: each one is the scorer on a modified history, plausible and plainly worded."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from features.build import build_features
from features.contract import SESSION_NUMBER_MAX
from features.episodes import Episodes
from features.validation import normalise_clients, normalise_sessions
from models import whatif
from models.reference import ReferenceProfile, TypicalLevels
from models.scorer import Scorer, _synthetic_episode
from models.whatif import (
    ASSOCIATION,
    LOWER_OF_BEST_AND_CLINIC,
    NOT_MONOTONE,
    OWN_BEST_ONLY,
    WhatIf,
    what_if,
)
from tests.models.test_scorer import cohort, scorer  # noqa: F401 (shared fixtures)

N_CLIENTS = 80


@pytest.fixture(scope="module")
def sample(cohort):  # noqa: F811
    ids = cohort.clients["client_id"].iloc[:N_CLIENTS].tolist()
    s = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
    c = cohort.clients[cohort.clients["client_id"].isin(ids)]
    return s.sort_values(["client_id", "session_number"]).reset_index(drop=True), c


def _episodes(sessions: pd.DataFrame, clients: pd.DataFrame, profile) -> Episodes:
    return Episodes.from_frames(
        normalise_sessions(sessions, profile), normalise_clients(clients), profile
    )


@pytest.fixture(scope="module")
def results(scorer, cohort, sample) -> list:  # noqa: F811
    return what_if(scorer, _episodes(*sample, cohort.profile))


def _modified(
    kind: str, element: str | None, s: pd.DataFrame, c: pd.DataFrame, profile
) -> pd.DataFrame:
    """The scenario's history built from the client's session rows with pandas, independently
    of models.whatif (ruptures read from the feature library's frame)."""
    s = s.sort_values("session_number").reset_index(drop=True)
    cols = list(profile.columns)
    att = s["attendance"] == "attended"
    rated = s[cols].notna() & att.to_numpy()[:, None]
    last = rated.any(axis=1)[::-1].idxmax()  # the latest rated session
    if kind == "element_recovers":
        col = f"alliance_{element}"
        s.loc[last, col] = s.loc[rated[col], col].max()
    elif kind == "rupture_repaired":
        f = build_features(s, c, profile=profile).iloc[-1]
        for e in profile.element_names:
            if f[f"{e}_unrepaired"] == 1.0 and rated.loc[last, f"alliance_{e}"]:
                at = int(f["engagement_landmark"] - f[f"{e}_sessions_since_rupture"])
                before = s.index[rated[f"alliance_{e}"] & (s["session_number"] < at)][-1]
                level = s.loc[before, f"alliance_{e}"]
                s.loc[last, f"alliance_{e}"] = max(level, s.loc[last, f"alliance_{e}"])
    elif kind == "next_attended":
        new = s.iloc[[-1]].copy()
        gaps = s["session_date"].diff().dt.days.dropna()
        days = max(1, int(gaps.median())) if len(gaps) else 7
        new["session_number"] += 1
        new["session_date"] += pd.Timedelta(days=days)
        new["attendance"] = "attended"
        for col in cols:
            seen = s.loc[rated[col], col]
            new[col] = seen.iloc[-1] if len(seen) else np.nan
        s = pd.concat([s, new], ignore_index=True)
    elif kind == "no_shows_stop":
        for i in s.index[s["attendance"] == "no_show"]:
            for col in cols:
                seen = s.loc[rated[col] & (s.index < i), col]
                s.loc[i, col] = seen.iloc[-1] if len(seen) else np.nan
        s.loc[s["attendance"] == "no_show", "attendance"] = "attended"
    return s


def test_each_scenario_is_the_scorer_on_its_history_built_independently(
    scorer,  # noqa: F811
    cohort,  # noqa: F811
    sample,
    results,
) -> None:
    sessions, clients = sample
    seen_kinds: set[str] = set()
    for r in results:
        assert isinstance(r, WhatIf)
        s = sessions[sessions["client_id"] == r.client_id]
        c = clients[clients["client_id"] == r.client_id]
        (now,) = scorer.score(_episodes(s, c, cohort.profile)).results
        assert r.probability == now.probability and r.landmark == now.landmark
        for sc in r.scenarios:
            modified = _modified(sc.kind, sc.element, s, c, cohort.profile)
            (alt,) = scorer.score(_episodes(modified, c, cohort.profile)).results
            assert sc.probability == pytest.approx(alt.probability, abs=1e-12), sc.kind
            assert sc.landmark == alt.landmark
            assert sc.change_pp == pytest.approx(100 * (alt.probability - now.probability))
            seen_kinds.add(sc.kind)
    assert seen_kinds == {"element_recovers", "rupture_repaired", "next_attended", "no_shows_stop"}


def test_a_raised_risk_is_never_hidden_and_every_sentence_disclaims_cause(results) -> None:
    n_raising = 0
    for r in results:
        changes = [s.change_pp for s in r.scenarios]
        assert changes == sorted(changes)
        assert r.notes[0] == OWN_BEST_ONLY
        for s in r.scenarios:
            assert s.raises_risk == (s.change_pp > 0)
            assert s.text.endswith(NOT_MONOTONE if s.raises_risk else ASSOCIATION)
            assert "nan" not in s.text.lower() and str(r.client_id) not in s.text
        raising = sum(s.raises_risk for s in r.scenarios)
        assert (len(r.notes) == 2) == (raising > 0)
        n_raising += raising
    # The tiny test model is not monotone: the flagged branch is exercised, not assumed.
    assert n_raising > 0


def test_scenario_histories_stay_plausible(scorer, cohort, sample, results) -> None:  # noqa: F811
    profile = scorer.profile
    episodes = _episodes(*sample, cohort.profile)
    current = scorer.score(episodes)
    names = scorer.feature_names
    for j, ep in enumerate(current.episode.tolist()):
        h = whatif._history(episodes, ep)
        features = dict(zip(names, current.features[j].tolist(), strict=True))
        for spec in whatif._scenarios(scorer, h, features, int(current.landmark[j])):
            m = spec.history
            finite = m.ratings[np.isfinite(m.ratings)]
            assert ((finite >= profile.scale_min) & (finite <= profile.scale_max)).all()
            # Every rating a scenario holds is one this client gave.
            assert np.isin(finite, h.ratings[np.isfinite(h.ratings)]).all()
            assert (np.diff(m.day) >= 0).all() and m.day[-1] >= h.day[-1]
            assert (np.diff(m.session_number) == 1).all() or spec.kind != "next_attended"
            assert not np.isfinite(m.ratings[:, m.attendance != 0]).any()


def test_a_known_history_gives_the_documented_scenarios(scorer) -> None:  # noqa: F811
    # Six weekly appointments, ratings falling 8.5 -> 8.0 -> 7.0 -> 6.0, no-shows at 3 and 6.
    episodes = _synthetic_episode(scorer.profile)
    (r,) = what_if(scorer, episodes)
    kinds = {(s.kind, s.element): s for s in r.scenarios}
    assert r.landmark == 6
    assert {e for k, e in kinds if k == "element_recovers"} == set(scorer.profile.element_names)
    trust = kinds[("element_recovers", "trust")]
    assert "(8.5 instead of 6 at session 5)" in trust.text
    assert kinds[("next_attended", None)].landmark == 7
    assert "about 7 days after the last" in kinds[("next_attended", None)].text
    assert "the 2 no-shows had been attended" in kinds[("no_shows_stop", None)].text


def test_refused_and_empty_episodes_come_back_as_the_scorer_reports_them(
    scorer: Scorer,  # noqa: F811
) -> None:
    good = _synthetic_episode(scorer.profile)
    bad_ratings = good.ratings.copy()
    bad_ratings[0, 0] = scorer.profile.scale_max + 5
    bad = Episodes.from_columns(
        scorer.profile,
        client_id=["x"],
        clinic_id=[None],
        therapist_id=[None],
        intake_day=good.intake_day,
        age=good.age,
        episode=good.episode,
        session_number=good.session_number,
        day=good.day,
        attendance=good.attendance,
        ratings=bad_ratings,
    )
    (out,) = what_if(scorer, bad)
    assert isinstance(out, tuple) and out[0].column == "alliance_empathy"


def test_no_appointment_is_appended_past_the_largest_session_number(scorer) -> None:  # noqa: F811
    good = _synthetic_episode(scorer.profile)
    last = good.session_number + (SESSION_NUMBER_MAX - good.session_number[-1])
    episodes = Episodes.from_columns(
        scorer.profile,
        client_id=["x"],
        clinic_id=[None],
        therapist_id=[None],
        intake_day=good.intake_day,
        age=good.age,
        episode=good.episode,
        session_number=last,
        day=good.day,
        attendance=good.attendance,
        ratings=good.ratings,
    )
    (r,) = what_if(scorer, episodes)
    assert isinstance(r, WhatIf) and r.landmark == SESSION_NUMBER_MAX
    assert "next_attended" not in {s.kind for s in r.scenarios}
    assert {"element_recovers", "no_shows_stop"} <= {s.kind for s in r.scenarios}


def _at_clinic(episodes: Episodes, clinic: str) -> Episodes:
    return Episodes.from_columns(
        episodes.profile,
        client_id=episodes.client_id,
        clinic_id=[clinic],
        therapist_id=episodes.therapist_id,
        intake_day=episodes.intake_day,
        age=episodes.age,
        episode=episodes.episode,
        session_number=episodes.session_number,
        day=episodes.day,
        attendance=episodes.attendance,
        ratings=episodes.ratings,
    )


def test_recovery_goes_to_the_lower_of_own_best_and_the_clinics_typical_level(
    scorer: Scorer,  # noqa: F811
) -> None:
    # Every element: 8.5 at session 1 (the client's best), 6 now at session 5.
    episodes = _at_clinic(_synthetic_episode(scorer.profile), "k1")
    first, second, third, *rest = scorer.profile.element_names
    k = scorer.k_max
    at5 = lambda v: tuple(v if i == 4 else None for i in range(k))  # noqa: E731
    typical = TypicalLevels(
        k_max=k,
        min_clients=20,
        # The all-clinics level, used for the second element where k1 has none of its own.
        overall={e: at5(7.5) for e in scorer.profile.element_names},
        clinics={"k1": {first: at5(7.0), third: at5(5.0), **{e: at5(9.5) for e in rest}}},
    )
    reference = ReferenceProfile(distribution={}, typical=typical, rows="test")
    with_ref = replace(scorer, reference=reference)
    (r,) = what_if(with_ref, episodes)
    recovers = {s.element: s for s in r.scenarios if s.kind == "element_recovers"}
    assert "(7 instead of 6 at session 5)" in recovers[first].text
    assert "the clinic's typical level at session 5" in recovers[first].text
    assert "(7.5 instead of 6 at session 5)" in recovers[second].text  # all-clinics fallback
    assert third not in recovers  # the clinic's level is below the client's rating now
    for e in rest:
        assert "the client's best so far (8.5 instead of 6" in recovers[e].text
    assert r.notes[0] == LOWER_OF_BEST_AND_CLINIC.format(n=20)
    # The scenario is the scorer on the history with the first element rated 7 at session 5.
    ratings = episodes.ratings.copy()
    ratings[0, 4] = 7.0
    modified = Episodes.from_columns(
        episodes.profile,
        client_id=episodes.client_id,
        clinic_id=episodes.clinic_id,
        therapist_id=episodes.therapist_id,
        intake_day=episodes.intake_day,
        age=episodes.age,
        episode=episodes.episode,
        session_number=episodes.session_number,
        day=episodes.day,
        attendance=episodes.attendance,
        ratings=ratings,
    )
    (alt,) = scorer.score(modified).results
    assert recovers[first].probability == pytest.approx(alt.probability, abs=1e-12)
    # Without a reference profile the same client recovers to their own best, as before.
    (plain,) = what_if(scorer, episodes)
    assert plain.notes[0] == OWN_BEST_ONLY
    assert all(
        "(8.5 instead of 6 at session 5)" in s.text
        for s in plain.scenarios
        if s.kind == "element_recovers"
    )
