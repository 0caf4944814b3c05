"""The dashboard's pieces without a server: charts, rupture marks, view models, the session."""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import pandas as pd
import pytest
from starlette.requests import Request

from features.build import build_features
from features.contract import SESSION_NUMBER_MAX
from features.profiles import get_profile
from service.audit import ClientRefs
from service.auth import Principal
from service.dashboard import charts, session, views
from service.dashboard.ruptures import rupture_sessions

PROFILE = get_profile("alliance6")


def _history(trust: list[float | None], attendance: list[str] | None = None) -> pd.DataFrame:
    n = len(trust)
    attendance = attendance or ["attended"] * n
    frame = pd.DataFrame({
        "client_id": "C1",
        "session_number": np.arange(1, n + 1),
        "session_date": pd.date_range("2026-01-05", periods=n, freq="7D"),
        "attendance": attendance,
    })  # fmt: skip
    for column in PROFILE.columns:
        frame[column] = 8.0
    frame["alliance_trust"] = [np.nan if v is None else v for v in trust]
    frame.loc[frame["attendance"] != "attended", list(PROFILE.columns)] = np.nan
    return frame


# -- charts ----------------------------------------------------------------------------------


def test_sparkline_is_an_image_with_its_numbers() -> None:
    svg = str(charts.sparkline([0.1, 0.25, 0.4]))
    assert 'role="img"' in svg
    assert "3 scores, oldest first: 10%, 25%, 40%" in svg
    assert svg.count("<polyline") == 1


def test_sparkline_without_scores_says_so() -> None:
    svg = str(charts.sparkline([]))
    assert "no scores yet" in svg and "<polyline" not in svg


def test_trajectory_marks_each_rupture_and_lists_values() -> None:
    series = [
        charts.Series("Trust", ((1, 8.0), (2, 8.5), (3, 5.0), (4, 6.0)), frozenset({3})),
        charts.Series("Goals", ((1, 9.0), (2, 9.0)), frozenset()),
    ]
    svg = str(charts.trajectory(series, scale=(0, 10), cutoff=8.0))
    assert svg.count('class="rupture"') == 1
    assert "Trust: session 1: 8.0; session 2: 8.5; session 3: 5.0; session 4: 6.0; " in svg
    assert "ruptures at session 3" in svg
    assert "Goals: session 1: 9.0; session 2: 9.0; no ruptures." in svg
    assert "session number" in svg  # the x axis is labelled


def test_chart_text_is_escaped() -> None:
    svg = str(charts.trajectory([charts.Series("<b>x</b>", ((1, 1.0),))], scale=(0, 10)))
    assert "<b>" not in svg and "&lt;b&gt;" in svg


def test_attendance_strip_letters_and_summary() -> None:
    svg = str(charts.attendance_strip([(1, "attended"), (2, "no_show"), (3, "late_cancel"),
                                       (4, "cancelled"), (5, "attended")]))  # fmt: skip
    letters = re.findall(r'text-anchor="middle">([A-Z?])</text>', svg)
    assert letters == ["A", "N", "L", "C", "A"]
    assert "5 appointments: 2 attended, 1 no-show, 1 late cancellation, 1 cancelled" in svg
    # Not colour alone: each code has a shape of its own.
    assert svg.count("<circle") == 2 and svg.count("<rect") == 1


def test_no_attendance_letter_is_the_rupture_mark() -> None:
    """ "R" marks a rupture on the charts; the attendance strip must not use it for anything."""
    ruptured = charts.trajectory([charts.Series("Trust", ((1, 8.0), (2, 4.0)), frozenset({2}))],
                                 scale=(0, 10))  # fmt: skip
    assert ">R</text>" in str(ruptured)
    letters = [letter for _, letter, _ in charts.legend()]
    assert "R" not in letters and len(set(letters)) == len(letters)
    strip = str(charts.attendance_strip([(1, "rescheduled")]))
    assert ">R</text>" not in strip and ">M</text>" in strip and "rescheduled" in strip


def test_caseload_chart_ids_are_unique_per_row() -> None:
    same = (0.2, 0.3)  # identical histories once gave identical title and desc ids
    rows = tuple(views.CaseloadRow(c, "T1", "low", 0.3, None, None, None, "1", same)
                 for c in ("a", "b", "c"))  # fmt: skip
    html = "".join(str(v.sparkline) for v in views.caseload_rows(views.CaseloadPage(rows, None)))
    ids = re.findall(r' id="([^"]+)"', html)
    assert len(ids) == 6 and len(set(ids)) == 6
    labelled = [i for ref in re.findall(r'aria-labelledby="([^"]+)"', html) for i in ref.split()]
    assert labelled == ids  # each chart names its own title and description


# -- rupture marks come from the features ---------------------------------------------------


def test_rupture_marks_where_the_features_count_one() -> None:
    history = _history([8.0, 8.2, 8.1, 8.3, 8.2, 5.0, 5.5, 8.4, 4.0])
    marks = rupture_sessions(history, pd.Timestamp("2026-01-01"), PROFILE)
    assert marks["trust"] == frozenset({6, 9})
    assert all(not marks[e] for e in PROFILE.element_names if e != "trust")
    # The same answer as the features' own summary at the last landmark.
    clients = pd.DataFrame({"client_id": ["C1"], "intake_date": [pd.Timestamp("2026-01-01")]})
    f = build_features(history, clients, profile=PROFILE, landmarks="latest",
                       k_max=SESSION_NUMBER_MAX)  # fmt: skip
    assert f["trust_ruptures_1sd"].iloc[0] == len(marks["trust"])
    assert 9 - f["trust_sessions_since_rupture"].iloc[0] == max(marks["trust"])


def test_rupture_marks_skip_unrated_sessions() -> None:
    history = _history([8.0, None, 8.1, 5.0], ["attended", "no_show", "attended", "attended"])
    assert rupture_sessions(history, pd.Timestamp("2026-01-01"), PROFILE)["trust"] == {4}


# -- view models -----------------------------------------------------------------------------


def test_every_sortable_column_is_a_store_sort_key() -> None:
    from service.store.caseload import SORT_KEYS

    assert set(views.SORTS) == set(SORT_KEYS)


def test_change_and_band_wording() -> None:
    assert views.change_text(0.123) == "up 12 points"
    assert views.change_text(-0.05) == "down 5 points"
    assert views.change_text(0.01) == "up 1 point"
    assert views.change_text(0.001) == "no change"
    assert views.change_text(None) == "no score by this model a week ago"
    assert views.band_label("high") == "High" and "<path" in str(views.band_icon("high"))
    assert views.band_label(None) == "Not scored"


def test_client_view_draws_every_element_and_the_ruptures() -> None:
    history = _history([8.0, 8.2, 8.1, 8.3, 8.2, 5.0])
    appointments = tuple(
        views.Appointment(int(r.session_number), r.session_date.date(), r.attendance,
                          {e: getattr(r, f"alliance_{e}") for e in PROFILE.element_names})
        for r in history.itertuples()
    )  # fmt: skip
    record = views.ClientRecord("C1", "T1", date(2026, 1, 1), appointments, 0.31, "moderate",
                                "3", None, 6)  # fmt: skip
    view = views.client_view(record, PROFILE)
    svg = str(view.trajectory)
    for element in PROFILE.elements:
        assert '<text class="panel-title" x=' in svg and element.label in svg
    assert svg.count('class="rupture"') == 1
    assert view.ruptures == [("Trust and rapport", [6])]
    assert view.probability == "31%" and view.band_label == "Moderate"


# -- the session cookie ----------------------------------------------------------------------

PRINCIPAL = Principal("user-1", "clinic-a", frozenset({"clients:read"}), "jti-1", "dev", "iss")
REFS = ClientRefs(b"k" * 32)


def test_session_round_trip_and_tampering() -> None:
    signer = session.signer(REFS)
    s = session.new_session(PRINCIPAL)
    value = session.dump(s, signer)
    assert session.load(value, signer) == s
    assert session.load(value[:-2] + ("AA" if value[-2:] != "AA" else "BB"), signer) is None
    assert session.load(value, session.signer(ClientRefs(b"j" * 32))) is None  # another key
    assert session.load("", signer) is None and session.load("garbage", signer) is None


def test_session_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    import itsdangerous.timed

    signer = session.signer(REFS)
    value = session.dump(session.new_session(PRINCIPAL), signer)
    later = itsdangerous.timed.time.time() + session.SESSION_MAX_AGE_S + 5
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: later)
    assert session.load(value, signer) is None


def test_session_ends_at_its_expiry() -> None:
    signer = session.signer(REFS)
    ended = session.Session(PRINCIPAL, "csrf", expires_at=1.0)
    assert session.load(session.dump(ended, signer), signer) is None
    live = session.new_session(PRINCIPAL, expires_at=4e9)
    assert session.load(session.dump(live, signer), signer) == live


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def test_same_origin() -> None:
    assert session.same_origin(_request({"host": "h:8000", "origin": "http://h:8000"}))
    assert not session.same_origin(_request({"host": "h:8000", "origin": "http://evil:8000"}))
    assert not session.same_origin(_request({"host": "h:8000", "origin": "null"}))
    assert not session.same_origin(_request({"host": "h:8000"}))
    s = session.new_session(PRINCIPAL)
    assert (
        session.csrf_ok(s, s.csrf) and not session.csrf_ok(s, "x") and not session.csrf_ok(s, None)
    )


def test_client_view_of_an_episode_without_appointments() -> None:
    # Its only appointment was deleted: no score, nothing to draw, and the page still renders.
    record = views.ClientRecord("C1", "T1", date(2026, 1, 1), (), None, None, None, None, None)
    view = views.client_view(record, PROFILE)
    assert view.band_label == "Not scored" and view.probability == "–"
    assert view.ruptures == []
