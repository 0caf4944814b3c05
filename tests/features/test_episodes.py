"""Episodes and the contract rules within them: one implementation for a request and a file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features import contract as c
from features import validation as v
from features.episodes import Episodes
from features.profiles import ALLIANCE6, WAI_SR, InstrumentProfile
from training.simulate import simulate_cohort

ATTENDED, NO_SHOW = c.ATTENDANCE_CODES.index("attended"), c.ATTENDANCE_CODES.index("no_show")


def one_episode(
    profile: InstrumentProfile = ALLIANCE6,
    *,
    numbers=(1, 2, 3),
    days=(10, 17, 24),
    attendance=(ATTENDED, NO_SHOW, ATTENDED),
    rating=(8.0, np.nan, 7.0),
    intake=5.0,
) -> Episodes:
    """One client's three appointments, every element rated ``rating`` at each."""
    n = len(numbers)
    return Episodes.from_columns(
        profile,
        client_id=["c"],
        clinic_id=["k"],
        therapist_id=["t"],
        intake_day=[intake],
        age=[40],
        episode=np.zeros(n),
        session_number=numbers,
        day=days,
        attendance=attendance,
        ratings=np.tile(np.asarray(rating, dtype=float), (len(profile.elements), 1)),
    )


def found(e: Episodes) -> list[tuple[int, str, str]]:
    return sorted(
        (int(a), x.column, x.reason) for x in v.contract_violations(e) for a in x.appointments
    )


def test_a_valid_episode_breaks_no_rule() -> None:
    assert v.contract_violations(one_episode()) == ()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            {"numbers": (1, 2, 2)},
            [
                (1, c.SESSION_NUMBER, v.DUPLICATE_SESSION_NUMBER),
                (2, c.SESSION_NUMBER, v.DUPLICATE_SESSION_NUMBER),
            ],
            id="duplicate number: every copy",
        ),  # fmt: skip
        pytest.param(
            {"days": (10, 3, 24)},
            [(1, c.SESSION_DATE, v.BEFORE_INTAKE), (1, c.SESSION_DATE, v.DATE_BACKWARDS)],
            id="backwards and before intake",
        ),  # fmt: skip
        pytest.param(
            {"numbers": (3, 2, 1)},
            [(0, c.SESSION_DATE, v.DATE_BACKWARDS), (1, c.SESSION_DATE, v.DATE_BACKWARDS)],
            id="dates follow session_number, not row order",
        ),  # fmt: skip
        pytest.param({"days": (10, 17, 17)}, [], id="same day twice is fine"),
        pytest.param({"intake": np.nan}, [], id="unknown intake"),
        pytest.param(
            {"numbers": (1, np.nan, 3)},
            [(1, c.SESSION_NUMBER, v.SESSION_NUMBER_INVALID)],
            id="unreadable number",
        ),  # fmt: skip
        pytest.param(
            {"days": (10, np.nan, 24)}, [(1, c.SESSION_DATE, v.DATE_NOT_ISO)], id="unreadable date"
        ),  # fmt: skip
        pytest.param(
            {"attendance": (ATTENDED, -1, ATTENDED)},
            [(1, c.ATTENDANCE, v.UNKNOWN_ATTENDANCE)],
            id="unknown code",
        ),  # fmt: skip
    ],
)
def test_each_rule(change: dict, expected: list) -> None:
    assert found(one_episode(**change)) == sorted(expected)


def test_ratings_against_the_scale_and_attendance() -> None:
    out = found(one_episode(rating=(8.0, 9.0, 10.5)))
    per_element = [(1, col, v.RATING_NOT_ATTENDED) for col in ALLIANCE6.columns]
    per_element += [(2, col, v.rating_out_of_range(ALLIANCE6)) for col in ALLIANCE6.columns]
    assert out == sorted(per_element)
    # 0 is on the 0-10 scale but below WAI-SR's 1-5.
    assert found(one_episode(rating=(0.0, np.nan, 1.0))) == []
    wai = found(one_episode(WAI_SR, rating=(0.0, np.nan, 1.0)))
    assert wai == sorted((0, col, v.rating_out_of_range(WAI_SR)) for col in WAI_SR.columns)


def test_unlinked_rows_get_cell_rules_only() -> None:
    e = one_episode(numbers=(1, 1, 2))
    orphan = Episodes.from_columns(
        e.profile, client_id=e.client_id, clinic_id=e.clinic_id, therapist_id=e.therapist_id,
        intake_day=e.intake_day, age=e.age, episode=[0, -1, -1],
        session_number=e.session_number, day=[10, np.nan, 1], attendance=e.attendance,
        ratings=e.ratings,
    )  # fmt: skip
    assert found(orphan) == [(1, c.SESSION_DATE, v.DATE_NOT_ISO)]


@st.composite
def episode_lists(draw):
    """Several small episodes, some broken, as (numbers, days, attendance, ratings, intake)."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        n = draw(st.integers(0, 5))
        numbers = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
        days = draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
        codes = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
        ratings = draw(st.lists(st.sampled_from([np.nan, 0.0, 7.5, 10.0, 10.5, -1.0]),
                                min_size=n, max_size=n))  # fmt: skip
        intake = draw(st.sampled_from([np.nan, 0.0, 20.0]))
        out.append((numbers, days, codes, ratings, intake))
    return out


def _build(parts, order=None) -> Episodes:
    rows = [(j, *row) for j, p in enumerate(parts) for row in zip(*p[:4], strict=True)]
    if order is not None:
        rows = [rows[i] for i in order]
    col = list(zip(*rows, strict=True)) if rows else [[]] * 5
    n_el = len(ALLIANCE6.elements)
    return Episodes.from_columns(
        ALLIANCE6,
        client_id=[f"c{j}" for j in range(len(parts))],
        clinic_id=["k"] * len(parts),
        therapist_id=["t"] * len(parts),
        intake_day=[p[4] for p in parts],
        age=[np.nan] * len(parts),
        episode=col[0],
        session_number=col[1],
        day=col[2],
        attendance=col[3],
        ratings=np.tile(np.asarray(col[4], dtype=float), (n_el, 1)),
    )


@given(episode_lists(), st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None)
def test_many_episodes_at_once_equal_each_alone(parts, rnd) -> None:
    """Checking episodes together or one by one, in any row order, finds the same problems."""
    n = sum(len(p[0]) for p in parts)
    order = list(range(n))
    rnd.shuffle(order)
    together = _build(parts, order)
    by_row = {order[i]: i for i in range(n)}  # original row -> position in `together`
    expected, offset = [], 0
    for p in parts:
        alone = _build([p])
        expected += [(by_row[offset + a], col, reason) for a, col, reason in found(alone)]
        offset += len(p[0])
    assert found(together) == sorted(expected)


def test_files_and_columns_give_the_same_episodes_and_problems() -> None:
    cohort = simulate_cohort(30, seed=5)
    s = v.normalise_sessions(cohort.sessions, cohort.profile)
    cl = v.normalise_clients(cohort.clients)
    s.loc[3, "alliance_goals"] = 12.0
    s.loc[7, c.SESSION_NUMBER] = s.loc[6, c.SESSION_NUMBER]
    from_frames = Episodes.from_frames(s, cl, cohort.profile)
    ids = list(from_frames.client_id)
    epoch = np.datetime64("1970-01-01")
    from_columns = Episodes.from_columns(
        cohort.profile,
        client_id=ids,
        clinic_id=cl[c.CLINIC_ID].tolist(),
        therapist_id=cl[c.THERAPIST_ID].tolist(),
        intake_day=(cl[c.INTAKE_DATE].to_numpy() - epoch) / np.timedelta64(1, "D"),
        age=cl[c.AGE].to_numpy(dtype=float),
        outcome=pd.Index(c.OUTCOME_CODES).get_indexer(cl[c.OUTCOME]),
        episode=[ids.index(x) for x in s[c.CLIENT_ID]],
        session_number=s[c.SESSION_NUMBER].to_numpy(dtype=float),
        day=(s[c.SESSION_DATE].to_numpy() - epoch) / np.timedelta64(1, "D"),
        attendance=pd.Index(c.ATTENDANCE_CODES).get_indexer(s[c.ATTENDANCE]),
        ratings=s[list(cohort.profile.columns)].to_numpy(dtype=float).T,
    )
    for name in ("client_id", "clinic_id", "therapist_id", "episode", "attendance", "outcome"):
        np.testing.assert_array_equal(getattr(from_frames, name), getattr(from_columns, name))
    for name in ("intake_day", "age", "session_number", "day", "ratings"):
        np.testing.assert_array_equal(getattr(from_frames, name), getattr(from_columns, name))
    assert found(from_frames) == found(from_columns) != []
    # And validate_tables reports exactly these rows for the same tables.
    report = v.validate_tables(s, cl, cohort.profile)
    assert sorted((p.row, p.column, p.reason) for p in report.problems) == found(from_frames)


def test_pack_sorts_each_episode_by_session_number() -> None:
    e = one_episode(numbers=(3, 1, 2), days=(24, 10, 17))
    arrays = e.pack(np.array([0]))
    assert arrays.session_number.tolist() == [1, 2, 3]
    assert arrays.day.tolist() == [10, 17, 24]
    assert arrays.n_clients == 1 and arrays.intake_day.tolist() == [5.0]


def test_columns_must_agree_in_length() -> None:
    e = one_episode()
    with pytest.raises(ValueError, match="differ in length"):
        Episodes.from_columns(
            e.profile, client_id=["a", "b"], clinic_id=["k"], therapist_id=["t"],
            intake_day=[1.0], age=[1.0], episode=[0], session_number=[1], day=[1],
            attendance=[0], ratings=np.full((6, 1), np.nan),
        )  # fmt: skip
    with pytest.raises(ValueError, match="episode must index"):
        Episodes.from_columns(
            e.profile, client_id=["a"], clinic_id=["k"], therapist_id=["t"],
            intake_day=[1.0], age=[1.0], episode=[3], session_number=[1], day=[1],
            attendance=[0], ratings=np.full((6, 1), np.nan),
        )  # fmt: skip


# -- reading typed tables and packing (what the old one-client constructor was tested for) --------


def _frames(numbers: list, dates: list | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One client's sessions (attended, unrated) and clients tables, typed but not normalised."""
    n = len(numbers)
    sessions = pd.DataFrame(
        {
            c.CLIENT_ID: ["a"] * n,
            c.SESSION_NUMBER: numbers,
            c.SESSION_DATE: dates or pd.date_range("2024-01-01", periods=n, freq="7D"),
            c.ATTENDANCE: ["attended"] * n,
            **{col: [np.nan] * n for col in ALLIANCE6.columns},
        }
    )
    clients = pd.DataFrame({c.CLIENT_ID: ["a"], c.INTAKE_DATE: [pd.Timestamp("2023-12-30")]})
    return sessions, clients


@pytest.mark.parametrize("bad", [0, -1, 1.5, c.SESSION_NUMBER_MAX + 1, np.iinfo(np.int64).min])
def test_session_numbers_outside_the_contract_read_as_invalid(bad) -> None:
    e = Episodes.from_frames(*_frames([1, bad, 3]), ALLIANCE6)
    assert np.isnan(e.session_number[1])
    assert found(e) == [(1, c.SESSION_NUMBER, v.SESSION_NUMBER_INVALID)]


def test_session_number_bounds_are_accepted_and_packed_in_order() -> None:
    e = Episodes.from_frames(*_frames([c.SESSION_NUMBER_MAX, 1]), ALLIANCE6)
    assert found(e) == [(0, c.SESSION_DATE, v.DATE_BACKWARDS)]  # row 0 is dated later
    np.testing.assert_array_equal(e.pack(np.array([0])).session_number, [1, c.SESSION_NUMBER_MAX])


def test_dates_may_be_iso_text_and_bad_cells_are_not_quoted() -> None:
    typed = Episodes.from_frames(*_frames([1, 2], ["2024-01-01", "2024-01-08"]), ALLIANCE6)
    np.testing.assert_array_equal(typed.day, [19723.0, 19730.0])
    with pytest.raises(ValueError, match="column 'session_date' must hold dates") as err:
        Episodes.from_frames(*_frames([1, 2], ["2024-01-01", "SECRET-1"]), ALLIANCE6)
    assert "SECRET" not in str(err.value)
    sessions, clients = _frames([1, 2])
    sessions["alliance_trust"] = ["SECRET-2", None]
    with pytest.raises(ValueError, match="column 'alliance_trust' must be numeric") as err:
        Episodes.from_frames(sessions, clients, ALLIANCE6)
    assert "SECRET" not in str(err.value)


def test_sorted_and_shuffled_appointments_pack_the_same_arrays() -> None:
    rng = np.random.default_rng(3)
    numbers = np.array([1, 2, 3, 5, 8, 9, 10, 12, 15])
    days = np.arange(9) * 7.0 + 10
    ratings = rng.uniform(0, 10, (6, 9))
    ratings[rng.random((6, 9)) < 0.3] = np.nan
    order = rng.permutation(9)

    def episode(rows: np.ndarray) -> Episodes:
        return Episodes.from_columns(
            ALLIANCE6, client_id=["c"], clinic_id=["k"], therapist_id=["t"], intake_day=[5.0],
            age=[40], episode=np.zeros(9), session_number=numbers[rows], day=days[rows],
            attendance=np.full(9, ATTENDED), ratings=ratings[:, rows],
        )  # fmt: skip

    in_order, shuffled = episode(np.arange(9)).pack([0]), episode(order).pack([0])
    for field in ("session_number", "day", "attendance", "ratings"):
        np.testing.assert_array_equal(getattr(shuffled, field), getattr(in_order, field))
    with pytest.raises(ValueError, match="duplicate 'session_number'"):
        one_episode(numbers=(3, 1, 3)).pack(np.array([0]))


def test_packed_arrays_never_alias_the_callers_arrays() -> None:
    ratings = np.full((6, 3), 8.0)
    numbers = np.array([1, 2, 3])
    e = Episodes.from_columns(
        ALLIANCE6, client_id=["c"], clinic_id=["k"], therapist_id=["t"], intake_day=[5.0],
        age=[40], episode=np.zeros(3), session_number=numbers, day=[10, 17, 24],
        attendance=[ATTENDED] * 3, ratings=ratings,
    )  # fmt: skip
    arrays = e.pack(np.array([0]))
    ratings[:] = 0.0
    numbers[:] = 99
    assert (e.ratings == 8.0).all() and (arrays.ratings == 8.0).all()
    np.testing.assert_array_equal(e.session_number, [1, 2, 3])
    np.testing.assert_array_equal(arrays.session_number, [1, 2, 3])


def test_pack_of_several_episodes_keeps_who_is_who() -> None:
    """Segments are reordered by length; client_rank says which chosen episode each is, and
    landmark rows come in the chosen order."""
    from features.build import landmark_rows

    lengths = [3, 1, 4, 2]
    rng = np.random.default_rng(3)
    episode = np.repeat(np.arange(4), lengths)
    numbers = np.concatenate([rng.permutation(n) + 1 for n in lengths])
    order = rng.permutation(episode.shape[0])  # appointments in any row order
    e = Episodes.from_columns(
        ALLIANCE6,
        client_id=["a", "b", "c", "d"],
        clinic_id=["k"] * 4,
        therapist_id=["t"] * 4,
        intake_day=[0.0, 1.0, 2.0, 3.0],
        age=[20, 30, 40, 50],
        episode=episode[order],
        session_number=numbers[order],
        day=(10 * episode + numbers)[order],
        attendance=np.zeros(episode.shape[0]),
        ratings=np.full((6, episode.shape[0]), np.nan),
    )
    chosen = np.array([3, 0, 2])
    arrays = e.pack(chosen)
    for s in range(arrays.n_clients):
        j = int(arrays.client_rank[s])
        ep = int(chosen[j])
        segment = slice(arrays.offsets[s], arrays.offsets[s + 1])
        assert arrays.session_number[segment].tolist() == list(range(1, lengths[ep] + 1))
        assert (arrays.day[segment] == 10 * ep + arrays.session_number[segment]).all()
        assert arrays.intake_day[s] == float(ep) and arrays.age[s] == 20 + 10 * ep
    latest = landmark_rows(arrays, "latest")
    assert [int(arrays.client_rank[arrays.seg_of_row[r]]) for r in latest] == [0, 1, 2]
