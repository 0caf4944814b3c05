"""Example-based tests of the landmark features: exact values on tiny hand-computed histories,
landmark selection, labels, refusals of tables that break the contract, and the array (serving)
path."""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import pandas as pd
import pytest

from features import kernels
from features import validation as v
from features.arrays import SessionArrays
from features.build import build_features, landmark_labels, pack_frames
from features.contract import ATTENDANCE_CODES
from features.episodes import Episodes
from features.profiles import ALLIANCE6, SRS, WAI_SR, Element, InstrumentProfile
from features.registry import feature_registry
from tests.features.packing import days, one_client
from tests.features.reference import reference_features
from tests.features.strategies import random_cohort

DAY0 = pd.Timestamp("2024-01-01")


def history(
    profile: InstrumentProfile,
    visits: list[tuple[int, str, float | list[float] | None]],
    *,
    client_id: str = "a",
    intake: str = "2023-12-25",
    outcome: str = "ongoing",
    age: float = 30.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sessions from ``(day offset, attendance, rating)``; a scalar rating rates every element."""
    rows = []
    for k, (offset, att, rating) in enumerate(visits, start=1):
        if rating is None:
            values = [math.nan] * len(profile.elements)
        elif isinstance(rating, list):
            values = rating
        else:
            values = [rating] * len(profile.elements)
        rows.append(
            {
                "client_id": client_id,
                "clinic_id": "north",
                "therapist_id": "t1",
                "session_number": k,
                "session_date": DAY0 + pd.Timedelta(days=offset),
                "attendance": att,
                **dict(zip(profile.columns, values, strict=True)),
            }
        )
    sessions = pd.DataFrame(rows)
    clients = pd.DataFrame(
        {
            "client_id": [client_id],
            "clinic_id": ["north"],
            "therapist_id": ["t1"],
            "intake_date": [pd.Timestamp(intake)],
            "outcome": [outcome],
            "age": [age],
        }
    )
    return sessions, clients


# Ratings 8, 9, (no-show), 6, 7, (late cancel), (no-show), 9 on every alliance6 element.
VISITS_A = [
    (0, "attended", 8.0),
    (7, "attended", 9.0),
    (14, "no_show", None),
    (21, "attended", 6.0),
    (35, "attended", 7.0),
    (42, "late_cancel", None),
    (56, "no_show", None),
    (63, "attended", 9.0),
]


@pytest.fixture(scope="module")
def frame_a() -> pd.DataFrame:
    sessions, clients = history(ALLIANCE6, VISITS_A)
    return build_features(sessions, clients, profile=ALLIANCE6).loc["a"]


def test_levels_and_change_at_landmark_5(frame_a: pd.DataFrame) -> None:
    row = frame_a.loc[5]
    for group in ("goals", "alliance_overall"):
        assert row[f"{group}_last"] == 7.0
        assert row[f"{group}_last3_mean"] == pytest.approx(22 / 3)
        assert row[f"{group}_early_mean"] == 8.5  # appointments 1-3: ratings 8 and 9
        assert row[f"{group}_min"] == 6.0
        # OLS of 8, 9, 6, 7 on 0..3: Sxy = -3, Sxx = 5.
        assert row[f"{group}_slope"] == pytest.approx(-0.6)
        assert row[f"{group}_change_first"] == -1.0
        assert row[f"{group}_change_prev"] == 1.0
        assert row[f"{group}_dev_own_mean"] == pytest.approx(-0.5)
        assert row[f"{group}_sd"] == pytest.approx(math.sqrt(5 / 3))
        assert row[f"{group}_mssd"] == pytest.approx(11 / 3)
        assert row[f"{group}_n_rated"] == 4.0


def test_rupture_counts_unrepaired_and_repair(frame_a: pd.DataFrame) -> None:
    # 9 -> 6 with 2 earlier ratings: floor 0.5 is the threshold; a 3-point drop is 1 and 2 "SD".
    at4, at5, at8 = frame_a.loc[4], frame_a.loc[5], frame_a.loc[8]
    assert frame_a.loc[3, "trust_ruptures_1sd"] == 0.0
    assert frame_a.loc[3, "trust_has_rupture"] == 0.0
    assert math.isnan(frame_a.loc[3, "trust_sessions_since_rupture"])
    assert (at4["trust_ruptures_1sd"], at4["trust_ruptures_2sd"]) == (1.0, 1.0)
    assert at4["trust_unrepaired"] == 1.0
    assert at4["trust_sessions_since_rupture"] == 0.0
    assert at5["trust_unrepaired"] == 1.0  # 7 < 9, the level before the drop
    assert at5["trust_sessions_since_rupture"] == 1.0
    assert at8["trust_unrepaired"] == 0.0  # back at 9
    assert at8["trust_has_rupture"] == 1.0
    assert at8["trust_sessions_since_rupture"] == 4.0


def test_rupture_threshold_uses_own_sd_after_three_sessions() -> None:
    # Ratings 5, 9, 5, 9 (SD 2.31) then 7: a 2-point drop is below 1 SD, so no rupture. Then
    # 9 -> 2: 7 points is more than 2 SD of the six ratings before it (2 x 1.97).
    sessions, clients = history(
        ALLIANCE6,
        [(7 * i, "attended", v) for i, v in enumerate([5.0, 9.0, 5.0, 9.0, 7.0, 9.0, 2.0])],
    )
    f = build_features(sessions, clients, profile=ALLIANCE6).loc["a"]
    # 9 -> 5 at appointment 3 (history of 2: floor) is the only rupture up to appointment 5.
    assert f.loc[5, "goals_ruptures_1sd"] == 1.0
    assert f.loc[7, "goals_ruptures_1sd"] == 2.0
    assert f.loc[7, "goals_ruptures_2sd"] == 2.0


def test_rules_at_landmark_5(frame_a: pd.DataFrame) -> None:
    row = frame_a.loc[5]
    assert row["alliance_overall_below_cutoff"] == 1.0  # 7 < 9
    assert row["goals_below_cutoff"] == 1.0  # 7 < 8
    assert row["alliance_overall_any_element_below_cutoff"] == 1.0
    assert row["alliance_overall_ceiling_streak"] == 0.0
    assert row["alliance_overall_drop_alert"] == 0.0  # 6 -> 7 is a rise
    assert frame_a.loc[4, "alliance_overall_drop_alert"] == 1.0  # 9 -> 6
    assert frame_a.loc[8, "alliance_overall_below_cutoff"] == 0.0  # 9 is not below 9
    assert math.isnan(frame_a.loc[1, "alliance_overall_drop_alert"])


def test_attendance_and_days_at_landmark_7(frame_a: pd.DataFrame) -> None:
    row = frame_a.loc[7]
    assert row["attendance_attended_count"] == 4.0
    assert row["attendance_no_show_count"] == 2.0
    assert row["attendance_late_cancel_count"] == 1.0
    assert row["attendance_no_show_rate"] == pytest.approx(2 / 7)
    assert row["attendance_no_show_first3"] == 1.0
    assert row["attendance_missed_streak"] == 2.0  # late cancel, then no-show
    assert row["attendance_last_no_show"] == 1.0
    assert row["attendance_last_attended"] == 0.0
    assert row["attendance_gap_mean_days"] == pytest.approx(56 / 6)
    assert row["attendance_gap_max_days"] == 14.0
    assert row["engagement_days_since_attended"] == 21.0  # day 56 vs day 35
    assert row["engagement_days_since_intake"] == 63.0
    assert row["engagement_landmark"] == 7.0
    assert row["engagement_unrated_share"] == 0.0
    assert frame_a.loc[8, "attendance_missed_streak"] == 0.0
    assert frame_a.loc[8, "engagement_days_since_attended"] == 0.0


def test_ceiling_streak_skips_unrated_sessions() -> None:
    visits = [
        (0, "attended", 9.0),
        (7, "attended", 10.0),
        (14, "attended", None),
        (21, "no_show", None),
        (28, "attended", 10.0),
        (35, "attended", [10.0, 10.0, 10.0, 10.0, 10.0, 9.0]),
    ]
    f = build_features(*history(ALLIANCE6, visits), profile=ALLIANCE6).loc["a"]
    assert f["alliance_overall_ceiling_streak"].tolist() == [0.0, 1.0, 1.0, 1.0, 2.0, 0.0]
    assert f["alliance_overall_ceiling_flag"].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert f.loc[6, "alliance_overall_any_element_below_cutoff"] == 0.0  # 9 is not below 8
    assert f.loc[3, "engagement_unrated_share"] == pytest.approx(1 / 3)


def test_srs_total_rules_with_decimal_ratings() -> None:
    visits = [
        (0, "attended", [9.5, 9.5, 9.5, 9.5]),  # total 38
        (7, "attended", [9.5, 9.5, 9.5, 9.0]),  # 37.5: drop 0.5
        (14, "attended", [9.0, 9.5, 9.0, 9.0]),  # 36.5: drop 1.0 exactly, still >= 36
        (21, "attended", [9.0, 9.0, 9.0, 8.9]),  # 35.9: below 36
        (28, "attended", [9.0, 9.0, 9.0, math.nan]),  # prorated total 36: not below
    ]
    f = build_features(*history(SRS, visits), profile=SRS).loc["a"]
    assert f["alliance_overall_drop_alert"].tolist()[1:] == [0.0, 1.0, 0.0, 0.0]
    assert f["alliance_overall_below_cutoff"].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert f.loc[5, "overall_n_rated"] == 4.0
    assert f.loc[5, "overall_last"] == 8.9  # the unrated item keeps its last rating


def test_single_session_and_never_rated_histories() -> None:
    one = build_features(*history(ALLIANCE6, [(0, "attended", 8.0)]), profile=ALLIANCE6).iloc[0]
    for stat in ("slope", "sd", "mssd", "change_first", "change_prev", "dev_own_mean"):
        assert math.isnan(one[f"alliance_overall_{stat}"])
    assert one["alliance_overall_last"] == 8.0
    assert one["alliance_overall_n_rated"] == 1.0
    assert math.isnan(one["attendance_gap_mean_days"])
    assert one["attendance_missed_streak"] == 0.0

    missed = [(0, "no_show", None), (7, "late_cancel", None), (14, "no_show", None)]
    f = build_features(*history(ALLIANCE6, missed), profile=ALLIANCE6).iloc[-1]
    assert f["engagement_never_attended"] == 1.0
    assert f["engagement_never_rated"] == 1.0
    assert math.isnan(f["engagement_days_since_attended"])
    assert math.isnan(f["engagement_unrated_share"])
    assert math.isnan(f["alliance_overall_last"])
    assert math.isnan(f["alliance_overall_below_cutoff"])
    assert f["alliance_overall_n_rated"] == 0.0
    assert f["alliance_overall_ruptures_1sd"] == 0.0
    assert f["attendance_missed_streak"] == 3.0
    assert np.isfinite(f.to_numpy()[~np.isnan(f.to_numpy())]).all()


def test_ratings_on_missed_appointments_and_infinite_values_are_ignored() -> None:
    """The contract refuses such tables; the kernel still ignores what it should never see."""
    visits = [(0, "attended", 8.0), (7, "no_show", 2.0), (14, "attended", -math.inf)]
    sessions, clients = history(ALLIANCE6, visits, age=math.inf)
    with pytest.raises(
        ValueError, match=re.escape(f"row 1, column 'alliance_empathy': {v.RATING_NOT_ATTENDED}")
    ):
        build_features(sessions, clients, profile=ALLIANCE6)
    arrays = one_client(
        ALLIANCE6,
        session_number=sessions["session_number"].to_numpy(),
        session_date=sessions["session_date"].to_numpy(),
        attendance=sessions["attendance"].tolist(),
        ratings=sessions[list(ALLIANCE6.columns)].to_numpy().T,
        intake_date="2023-12-25",
        age=math.inf,
    )
    registry = feature_registry(ALLIANCE6, include_covariates=True)
    x = kernels.compute_feature_matrix(arrays, registry)
    f = pd.DataFrame(x, index=[1, 2, 3], columns=registry.names)
    assert f.loc[2, "alliance_overall_last"] == 8.0
    assert f.loc[3, "alliance_overall_min"] == 8.0
    assert f.loc[3, "alliance_overall_n_rated"] == 1.0
    assert f.loc[3, "engagement_unrated_share"] == 0.5
    assert math.isnan(f.loc[3, "client_age"]) and math.isnan(f.loc[3, "client_age_under_25"])
    assert not np.isinf(f.to_numpy()).any()


def test_columns_dtype_and_index() -> None:
    sessions, clients = random_cohort(30, ALLIANCE6, seed=11)
    f = build_features(sessions, clients, profile=ALLIANCE6, include_covariates=True)
    assert tuple(f.columns) == feature_registry(ALLIANCE6, include_covariates=True).names
    assert (f.dtypes == np.float64).all()
    assert f.index.names == ["client_id", "landmark"]
    assert f.index.is_monotonic_increasing and f.index.is_unique
    assert not np.isinf(f.to_numpy()).any()
    assert "client_gender" not in f.columns


def test_landmark_modes() -> None:
    long_visits = [(7 * i, "attended", 8.0) for i in range(25)]
    s1, c1 = history(ALLIANCE6, long_visits, client_id="long", outcome="dropout")
    s2, c2 = history(ALLIANCE6, long_visits[:4], client_id="short", outcome="ongoing")
    s3, c3 = history(ALLIANCE6, long_visits[:3], client_id="done", outcome="completed")
    sessions, clients = pd.concat([s1, s2, s3]), pd.concat([c1, c2, c3])

    def keys(landmarks: str | int, k_max: int = 20) -> dict[str, list[int]]:
        f = build_features(sessions, clients, profile=ALLIANCE6, landmarks=landmarks, k_max=k_max)
        return {c: f.loc[c].index.tolist() for c in f.index.unique("client_id")}

    assert keys("all") == {"done": [1, 2, 3], "long": list(range(1, 21)), "short": [1, 2, 3, 4]}
    # The training population is the served one: the completed client's last appointment (3) is
    # scored in service (nobody knows it is the last), so it is trained and evaluated on too.
    assert keys("training") == keys("all")
    assert keys("training")["done"] == [1, 2, 3]
    assert keys("training", k_max=30)["long"] == list(range(1, 26))  # the dropout's last too
    assert keys("latest") == {"done": [3], "long": [25], "short": [4]}
    assert keys(4) == {"long": [4], "short": [4]}
    with pytest.raises(ValueError, match="landmarks must be"):
        keys(0)
    with pytest.raises(ValueError, match="landmarks must be"):
        keys("first")


def test_landmark_labels() -> None:
    sessions, clients = random_cohort(40, ALLIANCE6, seed=3)
    f = build_features(sessions, clients, profile=ALLIANCE6, landmarks="training")
    y = landmark_labels(clients, f.index)
    assert y.index.equals(f.index)
    outcome = clients.set_index("client_id")["outcome"]
    expected = outcome.map({"dropout": 1.0, "completed": 0.0}).reindex(f.index.get_level_values(0))
    np.testing.assert_array_equal(y.to_numpy(), expected.to_numpy(dtype=float))
    assert y.name == "dropout"


def test_any_number_of_elements() -> None:
    duo = InstrumentProfile(
        name="duo",
        elements=(Element("bond", "Bond", ""), Element("task", "Task", "")),
        scale_min=1.0,
        scale_max=7.0,
        total="mean",
        cutoff_total=5.0,
        element_cutoff=4.0,
        drop_points=0.5,
    )
    sessions, clients = random_cohort(20, duo, seed=2)
    f = build_features(sessions, clients, profile=duo)
    assert feature_registry(duo).groups[:3] == ("bond", "task", "alliance_overall")
    assert {"bond_slope", "task_ruptures_2sd", "alliance_overall_last"} <= set(f.columns)
    ref = reference_features(sessions, clients, profile=duo)
    np.testing.assert_allclose(f.to_numpy(), ref.to_numpy(), rtol=1e-9, atol=1e-9)


def _at(table: str, row: int, column: str, reason: str) -> str:
    return re.escape(f"{table} row {row}, column {column!r}: {reason}")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda s, c: (s.assign(session_number=[1, 1, 2]), c),
            _at("sessions", 0, "session_number", v.DUPLICATE_SESSION_NUMBER),
        ),
        (
            lambda s, c: (s.assign(attendance=["attended", "maybe", "attended"]), c),
            _at("sessions", 1, "attendance", v.UNKNOWN_ATTENDANCE),
        ),
        (
            lambda s, c: (s, c.assign(client_id=["someone-else"])),
            _at("sessions", 0, "client_id", v.UNKNOWN_CLIENT),
        ),
        (
            lambda s, c: (s.assign(client_id=["SECRET-ID-42", None, "SECRET-ID-42"]), c),
            _at("sessions", 1, "client_id", v.EMPTY_ID),
        ),
        (lambda s, c: (s.drop(columns=["alliance_trust"]), c), "missing column 'alliance_trust'"),
        (lambda s, c: (s, c.drop(columns=["intake_date"])), "missing column 'intake_date'"),
        (
            lambda s, c: (s.assign(session_number=[1, 2, 0]), c),
            _at("sessions", 2, "session_number", v.SESSION_NUMBER_INVALID),
        ),
        (
            lambda s, c: (s.assign(session_date=[DAY0, pd.NaT, DAY0]), c),
            _at("sessions", 1, "session_date", v.DATE_NOT_ISO),
        ),
        (
            lambda s, c: (s.assign(session_date=[DAY0, DAY0 - pd.Timedelta(days=1), DAY0]), c),
            _at("sessions", 1, "session_date", v.DATE_BACKWARDS),
        ),
        (
            lambda s, c: (s, c.assign(intake_date=[DAY0 + pd.Timedelta(days=1)])),
            _at("sessions", 0, "session_date", v.BEFORE_INTAKE),
        ),
        (
            lambda s, c: (s.assign(alliance_goals=[8.0, 11.0, np.nan]), c),
            _at("sessions", 1, "alliance_goals", v.rating_out_of_range(ALLIANCE6)),
        ),
        (
            lambda s, c: (s, pd.concat([c, c])),
            _at("clients", 1, "client_id", v.DUPLICATE_CLIENT),
        ),
        (
            lambda s, c: (s.assign(session_date=["2024-01-01", "SECRET-DATE", "2024-01-15"]), c),
            "column 'session_date' must hold dates",
        ),
    ],
)
def test_errors_name_row_and_column_never_values(mutate, message) -> None:
    sessions, clients = history(
        ALLIANCE6,
        [(0, "attended", 8.0), (7, "attended", 9.0), (14, "no_show", None)],
        client_id="SECRET-ID-42",
    )
    sessions, clients = mutate(sessions, clients)
    with pytest.raises(ValueError, match=message) as err:
        build_features(sessions, clients, profile=ALLIANCE6)
    assert "SECRET" not in str(err.value) and "maybe" not in str(err.value)


def test_the_first_problem_is_named_whatever_the_rule() -> None:
    """Sessions before clients, then the lowest row, whichever rule it breaks."""
    sessions, clients = history(
        ALLIANCE6, [(0, "attended", 8.0), (7, "attended", 9.0), (14, "attended", 7.0)]
    )
    sessions = sessions.assign(
        session_number=[1, 2, 2], attendance=["attended", "attended", "maybe"]
    )
    with pytest.raises(
        ValueError, match=_at("sessions", 1, "session_number", v.DUPLICATE_SESSION_NUMBER)
    ):
        build_features(sessions, pd.concat([clients, clients]), profile=ALLIANCE6)


def test_array_path_equals_build_features() -> None:
    """Episodes from columns (a request), in any appointment order, packed: the same features."""
    sessions, clients = history(ALLIANCE6, VISITS_A)
    expected = build_features(sessions, clients, profile=ALLIANCE6, landmarks="latest")
    shuffled = sessions.sample(frac=1.0, random_state=1)
    episodes = Episodes.from_columns(
        ALLIANCE6,
        client_id=["a"],
        clinic_id=["north"],
        therapist_id=["t1"],
        intake_day=days(["2023-12-25"]),
        age=[30.0],
        episode=np.zeros(len(shuffled)),
        session_number=shuffled["session_number"].to_numpy(),
        day=days([d.date() for d in shuffled["session_date"]]),
        attendance=[ATTENDANCE_CODES.index(a) for a in shuffled["attendance"]],
        ratings=shuffled[list(ALLIANCE6.columns)].to_numpy().T,
    )
    assert v.contract_violations(episodes) == ()
    arrays = episodes.pack(np.array([0]))
    registry = feature_registry(ALLIANCE6)
    got = kernels.compute_feature_matrix(arrays, registry, np.array([arrays.n_rows - 1]))
    np.testing.assert_array_equal(got, expected.to_numpy())
    with pytest.raises(ValueError, match="duplicate 'session_number'"):
        one_client(
            ALLIANCE6,
            session_number=[1, 1],
            session_date=["2024-01-01"] * 2,
            attendance=["attended"] * 2,
            ratings={},
        )
    with pytest.raises(ValueError, match="different instrument profiles"):
        kernels.compute_feature_matrix(arrays, feature_registry(SRS))


def test_landmark_rows_in_any_order_with_repeats_pick_rows_of_the_full_matrix() -> None:
    sessions, clients = random_cohort(120, ALLIANCE6, seed=9)
    arrays = pack_frames(sessions, clients, ALLIANCE6)
    registry = feature_registry(ALLIANCE6, include_covariates=True)
    whole = kernels.compute_feature_matrix(arrays, registry)
    rng = np.random.default_rng(0)
    for rows in (
        rng.permutation(arrays.n_rows),
        rng.integers(0, arrays.n_rows, 500),  # repeats
        np.array([arrays.n_rows - 1, 0, arrays.n_rows - 1]),
        np.array([], dtype=np.int64),
    ):
        got = kernels.compute_feature_matrix(arrays, registry, rows)
        np.testing.assert_array_equal(got, whole[rows])
        assert got.flags.f_contiguous and got.shape == (rows.shape[0], whole.shape[1])
    with pytest.raises(IndexError, match="landmark rows must lie in"):
        kernels.compute_feature_matrix(arrays, registry, np.array([arrays.n_rows]))
    with pytest.raises(IndexError, match="landmark rows must lie in"):
        kernels.compute_feature_matrix(arrays, registry, np.array([-1]))


@pytest.mark.parametrize(
    ("profile", "digest"),
    [(ALLIANCE6, "601aaf53cfe7725c"), (SRS, "28848354806b9d72"), (WAI_SR, "468ad16428992fc9")],
)
def test_feature_bits_are_those_the_served_models_were_trained_on(
    profile: InstrumentProfile, digest: str
) -> None:
    """Pins every bit of the features of a seeded cohort (NaNs canonicalised).

    The digests were computed by the first segmented-numpy kernel; the compiled kernel that
    replaced it for a while and the numpy kernel of today reproduce them, so models trained with
    any of them see identical inputs. A change of feature arithmetic (even the order of a sum)
    fails here; if it is meant, retrain, and update the digests in the same commit.
    """
    sessions, clients = random_cohort(300, profile, seed=9)
    arrays = pack_frames(sessions, clients, profile)
    x = kernels.compute_feature_matrix(arrays, feature_registry(profile, include_covariates=True))
    x = np.where(np.isnan(x), np.nan, x)
    assert hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16] == digest


@pytest.mark.parametrize("profile", [ALLIANCE6, SRS])
def test_from_episodes_equals_pack_frames(profile: InstrumentProfile) -> None:
    """Flat arrays in any row order (the API's batch form) pack the same histories as tables."""
    sessions, clients = random_cohort(60, profile, seed=5)
    shuffled = sessions.sample(frac=1.0, random_state=1).reset_index(drop=True)
    ids = clients["client_id"].to_numpy()
    position = {cid: k for k, cid in enumerate(ids)}
    via_frames = pack_frames(sessions, clients, profile)
    via_episodes = SessionArrays.from_episodes(
        profile,
        client=shuffled["client_id"].map(position).to_numpy(),
        session_number=shuffled["session_number"].to_numpy(),
        day=days(shuffled["session_date"].to_numpy()).astype(int),
        attendance=shuffled["attendance"]
        .map({code: i for i, code in enumerate(ATTENDANCE_CODES)})
        .to_numpy(),
        ratings=shuffled[list(profile.columns)].to_numpy(dtype=float).T,
        intake_day=days(clients["intake_date"].to_numpy()),
        age=clients["age"].to_numpy(dtype=float) if "age" in clients else np.full(len(ids), np.nan),
    )
    registry = feature_registry(profile)
    a = kernels.compute_feature_matrix(via_frames, registry)
    b = kernels.compute_feature_matrix(via_episodes, registry)
    # Same rows in the same segment order; client ids are positions in the episodes version.
    np.testing.assert_array_equal(ids[via_episodes.client_id.astype(int)], via_frames.client_id)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="duplicate 'session_number'"):
        SessionArrays.from_episodes(
            profile, client=np.array([0, 0]), session_number=np.array([1, 1]),
            day=np.array([0, 7]), attendance=np.array([0, 0]),
            ratings=np.full((len(profile.elements), 2), np.nan),
            intake_day=np.array([0.0]), age=np.array([np.nan]),
        )  # fmt: skip


def test_pack_frames_keeps_real_ids_sorted_and_only_clients_with_sessions() -> None:
    """Clients come in table order (not by id) and some have no session: the packed segments
    carry the real ids, ranked by id, and outputs are sorted by id."""
    sessions, clients = random_cohort(40, ALLIANCE6, seed=6)
    silent = clients.iloc[:3].assign(client_id=["zz-none", "aa-none", "mm-none"])
    clients = pd.concat([clients.iloc[::-1], silent], ignore_index=True)
    arrays = pack_frames(sessions, clients, ALLIANCE6)
    ids = sorted(sessions["client_id"].unique())
    assert sorted(arrays.client_id.tolist()) == ids
    np.testing.assert_array_equal(np.array(ids, dtype=object)[arrays.client_rank], arrays.client_id)
    f = build_features(sessions, clients, profile=ALLIANCE6, landmarks="latest")
    assert f.index.get_level_values("client_id").tolist() == ids
