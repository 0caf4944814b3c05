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
    LATER_APPOINTMENT,
    LOWER_OF_BEST_AND_CLINIC,
    NOT_MONOTONE,
    NOT_RATED_LATEST,
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
        # Raise the latest rated ratings to the level before the open rupture until the
        # feature library (at the latest appointment) says none is open any more.
        while True:
            f = build_features(s, c, profile=profile, landmarks="latest").iloc[-1]
            raised = False
            for e in profile.element_names:
                col = f"alliance_{e}"
                if f[f"{e}_unrepaired"] == 1.0 and rated.loc[last, col]:
                    at = int(f["engagement_landmark"] - f[f"{e}_sessions_since_rupture"])
                    before = s.index[rated[col] & (s["session_number"] < at)][-1]
                    if s.loc[before, col] > s.loc[last, col]:
                        s.loc[last, col] = s.loc[before, col]
                        raised = True
            if not raised:
                break
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


@pytest.fixture(scope="module")
def scenario_rows(scorer, cohort, sample):  # noqa: F811
    """Per (client_id, kind, element): the scorer's feature row of the scenario's history."""
    episodes = _episodes(*sample, cohort.profile)
    specs, _ = whatif._specs(scorer, episodes, scorer.score(episodes))
    scored = scorer.score(whatif._episodes_of(episodes, specs))
    assert scored.episode.tolist() == list(range(len(specs)))
    return {
        (str(episodes.client_id[ep]), spec.kind, spec.element): scored.features[j]
        for j, (ep, spec) in enumerate(specs)
    }


def test_each_scenario_is_the_scorer_on_its_history_built_independently(
    scorer,  # noqa: F811
    cohort,  # noqa: F811
    sample,
    results,
    scenario_rows,
) -> None:
    sessions, clients = sample
    seen_kinds: set[str] = set()
    n_scenarios = 0
    for r in results:
        assert isinstance(r, WhatIf)
        s = sessions[sessions["client_id"] == r.client_id]
        c = clients[clients["client_id"] == r.client_id]
        (now,) = scorer.score(_episodes(s, c, cohort.profile)).results
        assert r.probability == now.probability and r.landmark == now.landmark
        for sc in r.scenarios:
            modified = _modified(sc.kind, sc.element, s, c, cohort.profile)
            alt = scorer.score(_episodes(modified, c, cohort.profile))
            # Feature row by feature row: a flat model cannot hide a wrong history.
            np.testing.assert_array_equal(
                scenario_rows[(str(r.client_id), sc.kind, sc.element)],
                alt.features[0],
                err_msg=f"{sc.kind} {sc.element}",
            )
            assert sc.probability == pytest.approx(float(alt.probability[0]), abs=1e-12)
            assert sc.landmark == int(alt.landmark[0])
            assert sc.change_pp == pytest.approx(100 * (sc.probability - now.probability))
            seen_kinds.add(sc.kind)
            n_scenarios += 1
    assert seen_kinds == {"element_recovers", "rupture_repaired", "next_attended", "no_shows_stop"}
    assert len(scenario_rows) == n_scenarios


def test_a_repaired_rupture_is_closed_in_the_scenarios_own_features(
    scorer,  # noqa: F811
    cohort,  # noqa: F811
    sample,
    scenario_rows,
) -> None:
    sessions, _ = sample
    names = list(scorer.feature_names)
    n = 0
    for (cid, kind, _), row in scenario_rows.items():
        if kind != "rupture_repaired":
            continue
        s = sessions[sessions["client_id"] == cid]
        rated = (
            s[list(cohort.profile.columns)].notna()
            & (s["attendance"] == "attended").to_numpy()[:, None]
        )
        latest = rated[rated.any(axis=1)].iloc[-1]
        for e in cohort.profile.element_names:
            if latest[f"alliance_{e}"]:
                assert row[names.index(f"{e}_unrepaired")] == 0.0, (cid, e)
        n += 1
    assert n > 20


def test_a_raised_risk_is_never_hidden_and_every_sentence_disclaims_cause(results) -> None:
    n_raising = 0
    for r in results:
        changes = [s.change_pp for s in r.scenarios]
        assert changes == sorted(changes)
        assert r.notes[0] == OWN_BEST_ONLY
        for s in r.scenarios:
            # One threshold for the flag and the words: the change as the sentence rounds it.
            shown = round(s.change_pp, 1)
            assert s.raises_risk == (shown > 0 and s.kind != "next_attended")
            assert ("no change" in s.text) == (shown == 0)
            assert (NOT_MONOTONE in s.text) == s.raises_risk
            assert s.text.endswith(ASSOCIATION)
            assert (LATER_APPOINTMENT in s.text) == (s.kind == "next_attended")
            assert "nan" not in s.text.lower() and str(r.client_id) not in s.text
        raising = sum(s.raises_risk for s in r.scenarios)
        assert any("not monotone" in n for n in r.notes) == (raising > 0)
        n_raising += raising
    # The tiny test model is not monotone: the flagged branch is exercised, not assumed.
    assert n_raising > 0


def test_scenario_histories_stay_plausible(scorer, cohort, sample, results) -> None:  # noqa: F811
    profile = scorer.profile
    episodes = _episodes(*sample, cohort.profile)
    current = scorer.score(episodes)
    specs, _ = whatif._specs(scorer, episodes, current)
    assert len(specs) > len(current.episode)
    for ep, spec in specs:
        h = whatif._history(episodes, ep)
        m = spec.history
        finite = m.ratings[np.isfinite(m.ratings)]
        assert ((finite >= profile.scale_min) & (finite <= profile.scale_max)).all()
        # Every rating a scenario holds is one this client gave.
        assert np.isin(finite, h.ratings[np.isfinite(h.ratings)]).all()
        assert (np.diff(m.day) >= 0).all() and m.day[-1] >= h.day[-1]
        if spec.kind == "next_attended":
            # The appended appointment: strictly after the last one, numbered last + 1.
            assert m.day.shape[0] == h.day.shape[0] + 1
            assert m.day[-1] > h.day[-1]
            assert m.session_number[-1] == h.session_number[-1] + 1
            np.testing.assert_array_equal(m.day[:-1], h.day)
            np.testing.assert_array_equal(m.session_number[:-1], h.session_number)
        else:
            # The other scenarios keep the dates and numbers; only ratings or codes change.
            np.testing.assert_array_equal(m.day, h.day)
            np.testing.assert_array_equal(m.session_number, h.session_number)
        if spec.kind == "rupture_repaired":
            # Only the latest rated appointment changes, and only upwards.
            changed = np.flatnonzero(~((m.ratings == h.ratings) | np.isnan(h.ratings)).all(0))
            assert changed.tolist() == [spec.last_rated]
            assert (m.ratings[:, spec.last_rated] >= h.ratings[:, spec.last_rated]).all()
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


def test_an_element_unrated_at_the_latest_rated_session_is_named_in_the_notes(
    scorer: Scorer,  # noqa: F811
) -> None:
    good = _synthetic_episode(scorer.profile)
    first, second, *_ = scorer.profile.elements
    ratings = good.ratings.copy()
    ratings[1, 4] = np.nan  # session 5, the latest rated one
    episodes = replace(good, ratings=ratings)
    (r,) = what_if(scorer, episodes)
    assert NOT_RATED_LATEST.format(elements=second.label.lower()) in r.notes
    assert second.name not in {s.element for s in r.scenarios}
    (plain,) = what_if(scorer, good)
    assert not any(n.startswith("No recovery") for n in plain.notes)


def test_refused_and_empty_episodes_come_back_as_the_scorer_reports_them(
    scorer: Scorer,  # noqa: F811
) -> None:
    good = _synthetic_episode(scorer.profile)
    bad_ratings = good.ratings.copy()
    bad_ratings[0, 0] = scorer.profile.scale_max + 5
    bad = replace(good, ratings=bad_ratings)
    (out,) = what_if(scorer, bad)
    assert isinstance(out, tuple) and out[0].column == "alliance_empathy"


def test_no_appointment_is_appended_past_the_largest_session_number(scorer) -> None:  # noqa: F811
    good = _synthetic_episode(scorer.profile)
    last = good.session_number + (SESSION_NUMBER_MAX - good.session_number[-1])
    episodes = replace(good, session_number=last)
    (r,) = what_if(scorer, episodes)
    assert isinstance(r, WhatIf) and r.landmark == SESSION_NUMBER_MAX
    assert "next_attended" not in {s.kind for s in r.scenarios}
    assert {"element_recovers", "no_shows_stop"} <= {s.kind for s in r.scenarios}


def _at_clinic(episodes: Episodes, clinic: str) -> Episodes:
    return replace(episodes, clinic_id=np.array([clinic], dtype=object))


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
    modified = replace(episodes, ratings=ratings)
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


def test_flag_and_words_use_the_same_rounded_change() -> None:
    h = whatif._History(np.array([1]), np.array([0]), np.array([0], np.int8), np.full((1, 1), 5.0))
    spec = whatif._Spec("element_recovers", "e", h, "Risk {p} ({change}).")
    tiny = whatif._scenario(spec, 0.20004, 1, 0.2)  # +0.004 pp: shown as no change
    assert not tiny.raises_risk and "(no change)" in tiny.text and NOT_MONOTONE not in tiny.text
    up = whatif._scenario(spec, 0.201, 1, 0.2)
    assert up.raises_risk and "(0.1 percentage points higher)" in up.text
    assert NOT_MONOTONE in up.text and up.text.endswith(ASSOCIATION)
    later = whatif._scenario(replace(spec, kind="next_attended"), 0.25, 2, 0.2)
    assert not later.raises_risk and LATER_APPOINTMENT in later.text
    assert later.text.endswith(ASSOCIATION)
