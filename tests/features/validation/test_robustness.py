"""The validator and the normalisers never raise, whatever the cells."""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import contract as c
from features import validation as v
from features.profiles import ALLIANCE6
from tests.features.validation.helpers import Frames, cohort


def test_lone_surrogates_from_decoded_json_do_not_raise() -> None:
    s, cl = cohort()
    s = s.astype(object)
    s.loc[0, c.ATTENDANCE] = "\ud800"
    s.loc[1, c.CLIENT_ID] = "\udfff"
    report = v.validate_tables(s, cl)
    assert (0, c.ATTENDANCE, v.UNKNOWN_ATTENDANCE) in [
        (p.row, p.column, p.reason) for p in report.problems
    ]


_CELL = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(
        ["007", "1", "2.0", "-3", "1e400", "nan", "2024-01-05", "2024-02-30", "attended"]
    ),
)


@st.composite
def _raw_tables(draw: st.DrawFn) -> Frames:
    n_s, n_c = draw(st.integers(0, 6)), draw(st.integers(0, 4))
    s_cols = [*c.SESSION_COLUMNS, *ALLIANCE6.columns]
    c_cols = [*c.CLIENT_REQUIRED_COLUMNS, *c.CLIENT_OPTIONAL_COLUMNS]
    s_cols = draw(
        st.lists(st.sampled_from([*s_cols, "junk"]), unique=True, min_size=0, max_size=14)
    )
    c_cols = draw(st.lists(st.sampled_from([*c_cols, "junk"]), unique=True, min_size=0, max_size=9))
    sessions = pd.DataFrame(
        {col: draw(st.lists(_CELL, min_size=n_s, max_size=n_s)) for col in s_cols},
        index=range(n_s),
        dtype=object,
    )
    clients = pd.DataFrame(
        {col: draw(st.lists(_CELL, min_size=n_c, max_size=n_c)) for col in c_cols},
        index=range(n_c),
        dtype=object,
    )
    return sessions, clients


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables=_raw_tables(), as_text=st.booleans())
def test_validator_never_raises_on_arbitrary_string_cells(tables: Frames, as_text: bool) -> None:
    s, cl = tables
    if as_text:
        s, cl = s.astype("str"), cl.astype("str")
    report = v.validate_tables(s, cl)
    for p in report.problems:
        assert p.row is None or 0 <= p.row < (len(s) if p.table == "sessions" else len(cl))
    keys = [(v._TABLES.index(p.table), -1 if p.row is None else p.row) for p in report.problems]
    assert keys == sorted(keys)
    assert set(report.bad_session_rows.tolist()) == {
        p.row for p in report.errors if p.table == "sessions" and p.row is not None
    }
    assert set(report.bad_client_rows.tolist()) == {
        p.row for p in report.errors if p.table == "clients" and p.row is not None
    }
    # Normalising never raises either, whatever the cells.
    v.normalise_sessions(s, ALLIANCE6)
    v.normalise_clients(cl)
