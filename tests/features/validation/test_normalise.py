"""Normalised frames: the contract's dtypes, bad cells coerced to missing, typed input."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import contract as c
from features import validation as v
from features.profiles import ALLIANCE6
from tests.features.validation.helpers import cohort


def test_normalised_dtypes_are_the_contract() -> None:
    s, cl = cohort()
    s.loc[1, c.ATTENDANCE] = " No_Show"
    ns = v.normalise_sessions(s.assign(notes="x"), ALLIANCE6)
    assert list(ns.columns) == [*c.SESSION_COLUMNS, *ALLIANCE6.columns]
    assert ns.dtypes[c.SESSION_NUMBER] == np.int64
    assert str(ns.dtypes[c.SESSION_DATE]) == "datetime64[us]"
    for col in (c.CLIENT_ID, c.CLINIC_ID, c.THERAPIST_ID, c.ATTENDANCE):
        assert ns.dtypes[col] == "str"
    for col in ALLIANCE6.columns:
        assert ns.dtypes[col] == np.float64
    assert ns[c.CLIENT_ID].tolist()[:1] == ["007"]
    assert ns[c.ATTENDANCE].tolist()[1] == c.NO_SHOW
    assert np.isnan(ns.loc[1, "alliance_goals"]) and ns.loc[0, "alliance_goals"] == 5.0
    assert (ns[c.SESSION_DATE] == ns[c.SESSION_DATE].dt.normalize()).all()

    nc = v.normalise_clients(cl.drop(columns=[c.GENDER, c.REFERRAL_SOURCE]))
    assert list(nc.columns) == [
        *c.CLIENT_REQUIRED_COLUMNS[:4],
        c.OUTCOME,
        *c.CLIENT_OPTIONAL_COLUMNS,
    ]
    assert nc.dtypes[c.AGE] == np.float64 and np.isnan(nc.loc[1, c.AGE])
    assert nc[c.GENDER].isna().all() and nc.dtypes[c.GENDER] == "str"
    assert str(nc.dtypes[c.INTAKE_DATE]) == "datetime64[us]"


def test_normalisers_never_raise_and_coerce_bad_cells_to_missing() -> None:
    s, cl = cohort()
    s.loc[0, c.SESSION_NUMBER] = "1.5"
    s.loc[1, c.SESSION_DATE] = "soon"
    s.loc[2, c.ATTENDANCE] = "maybe"
    s.loc[3, "alliance_goals"] = "high"
    ns = v.normalise_sessions(s, ALLIANCE6)
    assert ns.dtypes[c.SESSION_NUMBER] == np.float64
    assert np.isnan(ns.loc[0, c.SESSION_NUMBER]) and ns.loc[2, c.SESSION_NUMBER] == 3
    assert pd.isna(ns.loc[1, c.SESSION_DATE])
    assert pd.isna(ns.loc[2, c.ATTENDANCE])
    assert np.isnan(ns.loc[3, "alliance_goals"])
    absent = v.normalise_sessions(s.drop(columns=c.ATTENDANCE), ALLIANCE6)
    assert absent[c.ATTENDANCE].isna().all()


def test_typed_input_validates_and_normalising_is_idempotent() -> None:
    raw_s, raw_cl = cohort()
    ns, nc = v.normalise_sessions(raw_s, ALLIANCE6), v.normalise_clients(raw_cl)
    assert v.validate_tables(ns, nc).problems == ()
    pd.testing.assert_frame_equal(v.normalise_sessions(ns, ALLIANCE6), ns)
    pd.testing.assert_frame_equal(v.normalise_clients(nc), nc)


def test_typed_edge_cases() -> None:
    raw_s, raw_cl = cohort()
    s = v.normalise_sessions(raw_s, ALLIANCE6)
    cl = v.normalise_clients(raw_cl)
    # Integer ids (Parquet) and integer ids with gaps (read back as float) keep their digits.
    s[c.THERAPIST_ID] = pd.Series([1, 1, 1, 2, np.nan], dtype="float64")
    assert v.normalise_sessions(s, ALLIANCE6)[c.THERAPIST_ID].tolist()[:4] == ["1", "1", "1", "2"]
    # A typed date-time is a date only at midnight; tz-aware ones are compared in wall time.
    s[c.SESSION_DATE] = s[c.SESSION_DATE] + pd.to_timedelta([0, 0, 0, 0, 5], unit="h")
    report = v.validate_tables(s, cl)
    assert (4, c.SESSION_DATE, v.DATE_NOT_ISO) in [
        (p.row, p.column, p.reason) for p in report.problems
    ]
    cl[c.INTAKE_DATE] = cl[c.INTAKE_DATE].dt.tz_localize("Europe/London")
    assert v.normalise_clients(cl)[c.INTAKE_DATE].notna().all()
