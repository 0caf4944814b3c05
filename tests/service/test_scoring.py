"""The batch checks and packing agree with the per-client path, client by client."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from features.arrays import ratings_matrix
from features.kernels import compute_feature_matrix
from features.registry import feature_registry
from service.schemas import EpisodeStruct, RiskRequest, SessionIn, parse_valid_batch
from service.scoring import check_and_pack, request_problems, single_arrays
from tests.service.helpers import request_for
from training.simulate import simulate_cohort


def _rated(body: dict) -> int:
    return next(i for i, s in enumerate(body["sessions"]) if s["ratings"])


def _missed(body: dict) -> int | None:
    return next((i for i, s in enumerate(body["sessions"]) if s["attendance"] != "attended"), None)


MUTATIONS = {
    "out_of_scale": lambda b: b["sessions"][_rated(b)]["ratings"].update(trust=10.5),
    "negative": lambda b: b["sessions"][_rated(b)]["ratings"].update(goals=-0.1),
    "unknown_element": lambda b: b["sessions"][_rated(b)]["ratings"].update(warmth=5.0),
    "null_known_element": lambda b: b["sessions"][_rated(b)]["ratings"].update(goals=None),
    "rated_no_show": lambda b: (
        (m := _missed(b)) is not None and b["sessions"][m]["ratings"].update(empathy=7.0)
    ),
    "duplicate_number": lambda b: b["sessions"][-1].update(
        session_number=b["sessions"][0]["session_number"]
    ),
    "date_backwards": lambda b: b["sessions"][-1].update(session_date="2000-01-03"),
    "before_intake": lambda b: b.update(intake_date="2099-01-01"),
    "none": lambda b: None,
}


@pytest.mark.parametrize("max_sessions", [None, 12])
def test_check_and_pack_equals_the_per_client_path(max_sessions: int | None) -> None:
    cohort = simulate_cohort(300, seed=17)
    ids = cohort.clients["client_id"].iloc[:90].tolist()
    rng = np.random.default_rng(0)
    kinds = list(MUTATIONS)
    bodies = []
    for cid in ids:
        body = copy.deepcopy(request_for(cohort, cid))
        if any(s["ratings"] for s in body["sessions"]):
            MUTATIONS[kinds[int(rng.integers(len(kinds)))]](body)
        bodies.append(body)
    reqs = [RiskRequest.model_validate(b) for b in bodies]
    packed = check_and_pack(reqs, cohort.profile, max_sessions=max_sessions)

    expected = {k: request_problems(r, cohort.profile, max_sessions=max_sessions)
                for k, r in enumerate(reqs)}  # fmt: skip
    assert packed.problems == {k: v for k, v in expected.items() if v}
    assert packed.valid == [k for k, v in expected.items() if not v]
    assert 10 < len(packed.problems) < 80  # the mutations did bite, and not everywhere

    # Every passing client's features in the batch equal its features scored alone.
    registry = feature_registry(cohort.profile)
    assert packed.arrays is not None
    last = packed.arrays.offsets[1:] - 1
    batch_x = compute_feature_matrix(packed.arrays, registry, last)
    for row, j in enumerate(packed.arrays.client_id.astype(int)):
        alone = single_arrays(reqs[packed.valid[j]], cohort.profile)
        x = compute_feature_matrix(alone, registry, np.array([alone.n_rows - 1]))
        np.testing.assert_array_equal(batch_x[row], x[0])


def test_batch_items_decoded_by_the_fast_path_pack_identically() -> None:
    """parse_valid_batch hands msgspec structs to check_and_pack; pydantic models pack the same."""
    cohort = simulate_cohort(120, seed=5)
    bodies = [request_for(cohort, cid) for cid in cohort.clients["client_id"].iloc[:40]]
    raw = json.dumps({"clients": bodies}).encode()
    fast = parse_valid_batch(raw)
    assert all(isinstance(x, EpisodeStruct) for x in fast)
    models = [RiskRequest.model_validate(b) for b in bodies]
    a = check_and_pack(fast, cohort.profile).arrays
    b = check_and_pack(models, cohort.profile).arrays
    assert a is not None and b is not None
    for field in ("client_id", "offsets", "session_number", "day", "attendance", "ratings",
                  "intake_day", "age"):  # fmt: skip
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.mark.parametrize(
    "ratings",
    [
        {"empathy": 8.0, "acceptance": 7.5, "trust": 9.0, "goals": 6.0, "collaboration": 5.5,
         "communication": 4.0},  # every element: one itemgetter call
        {"communication": 4.0, "collaboration": 5.5, "goals": 6.0, "trust": 9.0,
         "acceptance": 7.5, "empathy": 8.0},  # same keys, other order
        {"empathy": 8.0, "goals": None},  # some, one null
        {},  # not rated
        {"empathy": 8.0, "acceptance": 7.5, "trust": 9.0, "goals": 6.0, "collaboration": 5.5,
         "warmth": 4.0},  # six keys, one unknown: the KeyError branch
        {"empathy": 8.0, "acceptance": 7.5, "trust": 9.0, "goals": 6.0, "collaboration": 5.5,
         "communication": 4.0, "warmth": 1.0},  # seven keys
    ],
)  # fmt: skip
def test_ratings_matrix_reads_every_element_in_profile_order(ratings: dict) -> None:
    cohort_profile = simulate_cohort(10, seed=1).profile
    names = cohort_profile.element_names
    other = {n: float(i) for i, n in enumerate(names)}  # a full row next to it
    sessions = [SessionIn(session_number=1, session_date="2026-01-05", attendance="attended",
                          ratings=ratings),
                SessionIn(session_number=2, session_date="2026-01-12", attendance="attended",
                          ratings=other)]  # fmt: skip
    got, n_keys = ratings_matrix([s.ratings for s in sessions], cohort_profile)
    expected = np.array(
        [[np.nan if r.get(n) is None else r[n] for r in (ratings, other)] for n in names]
    )
    assert got.shape == (len(names), 2) and got.flags.c_contiguous
    assert n_keys.tolist() == [len(ratings), len(other)]
    np.testing.assert_array_equal(got, expected)
