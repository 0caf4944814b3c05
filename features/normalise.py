"""Reading the ``sessions`` and ``clients`` tables into contract types (the file edge's parser).

Pure: frames in, frames out. Every cell is parsed vectorised and never raises: what cannot be
read becomes missing, and the parser records, per column, which cells were non-empty and which
were valid, so that :mod:`features.validation` can report each unreadable cell with its row,
column and reason. The HTTP API reads its requests with pydantic instead; both hand the same
:class:`~features.episodes.Episodes` to the contract rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from features import contract as c
from features.contract import AGE_MAX, AGE_MIN, SESSION_NUMBER_MAX
from features.profiles import InstrumentProfile

_ISO_DATE = r"\d{4}-\d{2}-\d{2}(?:[T ]00:00(?::00(?:\.0+)?)?)?"
_DATE_UNIT: Final = "datetime64[us]"


def _utf8_safe(value: object) -> object:
    """Replace lone surrogates (possible in decoded JSON) so the text can be stored as UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _as_str(s: pd.Series) -> pd.Series:
    """Cells as pandas strings ("str" dtype), whitespace-stripped, empty -> missing."""
    if s.dtype.kind == "f":
        # Integer ids read from Parquet with gaps arrive as floats: 7.0 means "7".
        whole = s.notna() & np.isfinite(s) & (s == np.floor(s)) & (s.abs() < 2**53)
        if bool(whole.eq(s.notna()).all()):
            s = s.astype("Int64")
    try:
        out = s.astype("str")
    except (UnicodeEncodeError, UnicodeDecodeError):
        out = s.map(_utf8_safe).astype("str")
    out = out.str.strip()
    empty = out == ""
    # A no-op mask is skipped: pandas' per-call overhead dominates on small frames.
    return out.mask(empty) if empty.any() else out


def _as_float(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with NaN where missing or unparseable, mask of non-missing cells)."""
    if s.dtype.kind in "iuf":
        values = s.to_numpy(dtype="float64", na_value=np.nan)
        return values, ~np.isnan(values)
    if s.dtype.kind == "b":
        present = s.notna().to_numpy()
        return np.full(len(s), np.nan), present
    text = _as_str(s)
    present = text.notna().to_numpy()
    try:
        # Arrow's string->double cast is much faster than to_numeric; it rejects the same
        # spellings (measured), and any rejection falls back to to_numeric for the whole column.
        values = text.astype("float64[pyarrow]").to_numpy(dtype="float64", na_value=np.nan)
    except (ValueError, TypeError, ImportError):
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return values, present


def _as_whole(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Mask of values that are whole numbers within [lo, hi]."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values == np.floor(values)) & (values >= lo) & (values <= hi)


def _as_date(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """(dates at midnight, tz-naive, NaT where missing or not ISO; mask of non-missing cells)."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_localize(None)
    if s.dtype.kind == "M":
        dates = s.astype(_DATE_UNIT)
        present = dates.notna().to_numpy()
        # A typed date-time is a date only when it is at midnight, as for text.
        return dates.where(dates == dates.dt.normalize()), present
    text = _as_str(s)
    present = text.notna().to_numpy()
    iso = text.str.fullmatch(_ISO_DATE).fillna(False).astype(bool)
    if not iso.all():
        text = text.where(iso)
    dates = pd.to_datetime(text.str.slice(0, 10), format="%Y-%m-%d", errors="coerce")
    return dates.astype(_DATE_UNIT), present


def _as_code(s: pd.Series, codes: Sequence[str]) -> pd.Series:
    """Codes lower-cased and stripped; anything not in ``codes`` -> missing."""
    text = _as_str(s).str.lower()
    known = text.isin(codes)
    return text if known.all() else text.where(known)


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """``df[name]`` with a positional index, or an all-missing column when absent."""
    if name in df.columns:
        col = df[name]
        if isinstance(col, pd.DataFrame):  # duplicated header: the first one counts
            col = col.iloc[:, 0]
        return col.reset_index(drop=True)
    return pd.Series([None] * len(df), dtype="object")


@dataclass(frozen=True)
class Parsed:
    """A normalised frame plus, per column, which cells were non-empty and which were valid."""

    frame: pd.DataFrame
    present: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]


def _parse_text(
    df: pd.DataFrame, names: Sequence[str]
) -> tuple[dict[str, pd.Series | np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Text columns (ids, free text): parsed values, and present == valid masks."""
    out: dict[str, pd.Series | np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for name in names:
        text = _as_str(_column(df, name))
        out[name] = text
        present[name] = text.notna().to_numpy()
    return out, present, dict(present)


def parse_sessions(df: pd.DataFrame, profile: InstrumentProfile | None) -> Parsed:
    """Normalise ``sessions``; see :func:`normalise_sessions`."""
    out, present, valid = _parse_text(df, (c.CLIENT_ID, c.CLINIC_ID, c.THERAPIST_ID))
    numbers, present[c.SESSION_NUMBER] = _as_float(_column(df, c.SESSION_NUMBER))
    valid[c.SESSION_NUMBER] = _as_whole(numbers, 1, SESSION_NUMBER_MAX)
    numbers = np.where(valid[c.SESSION_NUMBER], numbers, np.nan)
    out[c.SESSION_NUMBER] = numbers.astype(np.int64) if valid[c.SESSION_NUMBER].all() else numbers
    dates, present[c.SESSION_DATE] = _as_date(_column(df, c.SESSION_DATE))
    out[c.SESSION_DATE] = dates
    valid[c.SESSION_DATE] = dates.notna().to_numpy()
    attendance = _as_code(_column(df, c.ATTENDANCE), c.ATTENDANCE_CODES)
    out[c.ATTENDANCE] = attendance
    valid[c.ATTENDANCE] = attendance.notna().to_numpy()
    for name in profile.columns if profile is not None else ():
        ratings, present[name] = _as_float(_column(df, name))
        out[name] = ratings
        valid[name] = present[name] & ~np.isnan(ratings)
    return Parsed(pd.DataFrame(out), present, valid)


def parse_clients(df: pd.DataFrame) -> Parsed:
    """Normalise ``clients``; see :func:`normalise_clients`."""
    out, present, valid = _parse_text(df, (c.CLIENT_ID, c.CLINIC_ID, c.THERAPIST_ID))
    dates, present[c.INTAKE_DATE] = _as_date(_column(df, c.INTAKE_DATE))
    out[c.INTAKE_DATE] = dates
    valid[c.INTAKE_DATE] = dates.notna().to_numpy()
    outcome = _as_code(_column(df, c.OUTCOME), c.OUTCOME_CODES)
    out[c.OUTCOME] = outcome
    valid[c.OUTCOME] = outcome.notna().to_numpy()
    age, present[c.AGE] = _as_float(_column(df, c.AGE))
    valid[c.AGE] = _as_whole(age, AGE_MIN, AGE_MAX)
    out[c.AGE] = np.where(valid[c.AGE], age, np.nan)
    free_text, present_text, _ = _parse_text(df, (c.GENDER, c.REFERRAL_SOURCE))
    out |= free_text
    present |= present_text
    valid |= present_text
    return Parsed(pd.DataFrame(out), present, valid)


def with_index(frame: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    return frame.set_axis(like.index, axis=0)


def normalise_sessions(df: pd.DataFrame, profile: InstrumentProfile) -> pd.DataFrame:
    """The ``sessions`` table in contract types, keeping only contract columns in order.

    Never raises on bad cells: what cannot be parsed becomes missing, and
    :func:`features.validation.validate_tables` reports it. Absent columns come back
    all-missing.

    Parameters
    ----------
    df
        Raw (all text, as read from CSV) or typed sessions rows, any index.
    profile
        Instrument profile whose ``alliance_<element>`` columns are kept.

    Returns
    -------
    DataFrame with ``df``'s index and columns ``client_id``, ``clinic_id``, ``therapist_id``
    (str, stripped, missing if empty), ``session_number`` (int64 when every row holds a whole
    number 1-10000, else float64 with NaN for the others), ``session_date`` (datetime64[us],
    tz-naive, midnight; NaT unless an ISO date), ``attendance`` (str: one of the attendance
    codes, lower-cased; missing if unknown), then one float64 column per profile element
    (rating on the profile's scale; NaN when empty or not a number).
    """
    return with_index(parse_sessions(df, profile).frame, df)


def normalise_clients(df: pd.DataFrame) -> pd.DataFrame:
    """The ``clients`` table in contract types, keeping only contract columns in order.

    Never raises on bad cells (see :func:`normalise_sessions`).

    Returns
    -------
    DataFrame with ``df``'s index and columns ``client_id``, ``clinic_id``, ``therapist_id``
    (str), ``intake_date`` (datetime64[us], midnight), ``outcome`` (str: completed, dropout or
    ongoing; missing if unknown), ``age`` (float64 whole years, NaN if missing or invalid),
    ``gender`` and ``referral_source`` (str, free text, missing if empty or absent).
    """
    return with_index(parse_clients(df).frame, df)
