"""Check ``sessions`` and ``clients`` frames against the data contract and normalise their types.

Pure: frames in, a :class:`ValidationReport` (or normalised frames) out; no I/O, no logging.
The CLI, training and the HTTP API all use this module, so a client sees the same reason text
wherever a problem is caught.

Every reason text lives in this module, as a module-level constant or a small function of the
instrument profile. Reasons name the class of problem and what is allowed, never the offending
value: identifiers, ratings and dates can identify a client. ``docs/data-contract.md`` lists
every reason verbatim (a test keeps them in step).

Rules are vectorised (one boolean mask per rule over the whole column) so that a file of a
million session rows validates in seconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import pandas as pd

from features import contract as c
from features.profiles import ALLIANCE_PREFIX as _ALLIANCE_PREFIX
from features.profiles import PROFILES, InstrumentProfile, infer_profile

Table = Literal["sessions", "clients"]
Severity = Literal["error", "warning"]

#: Largest accepted ``session_number``; far beyond any episode (weekly for 190 years), it
#: only keeps absurd values out of int64 arithmetic.
SESSION_NUMBER_MAX: Final = 10_000
#: Accepted ``age`` range in whole years, inclusive.
AGE_MIN: Final = 0
AGE_MAX: Final = 120

# ---------------------------------------------------------------------------------------------
# Reason texts: the one place they are written. Never interpolate a cell value into any of them.
# ---------------------------------------------------------------------------------------------

MISSING_COLUMN: Final = "required column is missing"
UNKNOWN_COLUMN: Final = "a column that is not part of the data contract is ignored"
NO_PROFILE_MATCH: Final = (
    "the alliance_* columns match no instrument profile; known profiles: "
    + "; ".join(f"{p.name} ({', '.join(p.columns)})" for p in PROFILES.values())
)
EMPTY_ID: Final = "identifier is empty"
SESSION_NUMBER_INVALID: Final = (
    f"session_number is missing or not a whole number from 1 to {SESSION_NUMBER_MAX}"
)
DUPLICATE_SESSION_NUMBER: Final = "session_number occurs more than once for this client"
DATE_NOT_ISO: Final = (
    "date is missing or not an ISO date (YYYY-MM-DD; an ISO date-time is accepted only at "
    "midnight, without a time zone)"
)
DATE_BACKWARDS: Final = (
    "session_date is earlier than the session_date of the client's previous session_number"
)
UNKNOWN_ATTENDANCE: Final = "attendance is missing or not a known code; expected one of " + (
    ", ".join(c.ATTENDANCE_CODES)
)
RATING_NOT_NUMERIC: Final = "rating is not a number"
RATING_NOT_ATTENDED: Final = (
    "rating present on a session that was not attended; only attended sessions are rated"
)
UNKNOWN_CLIENT: Final = "session for a client_id that is not in the clients table"
CLINIC_MISMATCH: Final = "clinic_id differs from this client's clinic_id in the clients table"
BEFORE_INTAKE: Final = "session_date is before this client's intake_date in the clients table"
DUPLICATE_CLIENT: Final = "client_id occurs more than once in the clients table"
UNKNOWN_OUTCOME: Final = "outcome is missing or not a known code; expected one of " + (
    ", ".join(c.OUTCOME_CODES)
)
AGE_INVALID: Final = f"age is not a whole number of years from {AGE_MIN} to {AGE_MAX}"
NO_SESSIONS: Final = "client has no session rows, so it can be neither trained on nor scored"


def rating_out_of_range(profile: InstrumentProfile) -> str:
    """Reason for a rating outside ``profile``'s scale."""
    return (
        f"rating is outside the {profile.name} scale {profile.scale_min:g} to {profile.scale_max:g}"
    )


def alliance_not_in_profile(profile: InstrumentProfile) -> str:
    """Reason for an ``alliance_*`` column that ``profile`` does not rate."""
    return (
        f"alliance column is not part of the {profile.name} profile, "
        f"whose columns are {', '.join(profile.columns)}"
    )


def no_profile_match(found: Sequence[str]) -> str:
    """:data:`NO_PROFILE_MATCH` plus which ``alliance_*`` columns were found and missing.

    Column headers are named (they are not client data); the closest profile is the one
    sharing most columns with ``found``.
    """
    found_set = set(found)
    closest = max(PROFILES.values(), key=lambda p: len(found_set & set(p.columns)))
    missing = [col for col in closest.columns if col not in found_set]
    return (
        f"{NO_PROFILE_MATCH}; found: {', '.join(sorted(found_set)) or 'none'}; "
        f"closest profile {closest.name} is missing: {', '.join(missing) or 'none'}"
    )


def unknown_column(position: int) -> str:
    """:data:`UNKNOWN_COLUMN`, naming the column by 1-based position, not by header.

    A file without a header row turns its first data row into headers, so a header can be
    client data.
    """
    return f"{UNKNOWN_COLUMN} (column {position} of the table)"


def reason_texts() -> tuple[str, ...]:
    """Every fixed reason text, including the per-profile ones, for documentation checks."""
    fixed = tuple(
        value
        for name, value in globals().items()
        if name.isupper() and isinstance(value, str) and not name.startswith("_")
    )
    per_profile = tuple(
        fn(p) for p in PROFILES.values() for fn in (rating_out_of_range, alliance_not_in_profile)
    )
    return fixed + per_profile


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

_TABLES: Final[tuple[Table, ...]] = ("sessions", "clients")


@dataclass(frozen=True, slots=True)
class Problem:
    """One contract violation.

    ``row`` is the 0-based position in the frame as given (``None`` for a table-level problem
    such as a missing column); ``column`` is the column concerned, if any; ``reason`` is one of
    this module's reason texts.
    """

    table: Table
    row: int | None
    column: str | None
    reason: str
    severity: Severity = "error"


@dataclass(frozen=True, eq=False)
class ValidationReport:
    """Every problem found in one pair of tables, in (table, row, column) order.

    Attributes
    ----------
    problems
        Sessions first, then clients; table-level problems (``row is None``) first in each.
    profile
        The instrument profile the ratings were checked against: the one given, or the one
        inferred from the ``alliance_*`` columns; ``None`` when neither worked (the report
        then holds a table-level error saying so).
    bad_session_rows, bad_client_rows
        Sorted unique 0-based positions (int64) of rows with at least one error.
    n_sessions, n_clients
        Number of rows checked in each table.
    """

    problems: tuple[Problem, ...]
    profile: InstrumentProfile | None
    bad_session_rows: np.ndarray
    bad_client_rows: np.ndarray
    n_sessions: int = 0
    n_clients: int = 0

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not any(p.severity == "error" for p in self.problems)

    @property
    def table_errors(self) -> tuple[Problem, ...]:
        """Errors about a whole table (e.g. a missing column): no row can be kept or dropped."""
        return tuple(p for p in self.problems if p.severity == "error" and p.row is None)

    def to_frame(self) -> pd.DataFrame:
        """One row per problem: ``table``, ``row`` (0-based, Int64, missing if table-level),
        ``column``, ``severity``, ``reason``."""
        return pd.DataFrame(
            {
                "table": pd.Series([p.table for p in self.problems], dtype="str"),
                "row": pd.array([p.row for p in self.problems], dtype="Int64"),
                "column": pd.Series([p.column for p in self.problems], dtype="str"),
                "severity": pd.Series([p.severity for p in self.problems], dtype="str"),
                "reason": pd.Series([p.reason for p in self.problems], dtype="str"),
            }
        )

    def summary(self) -> pd.DataFrame:
        """Counts of problems by ``table``, ``column``, ``severity`` and ``reason``.

        Returns a frame with those four columns plus ``rows`` (int64, number of problems),
        ordered by table (sessions first), then severity (errors first), then descending count.
        """
        counts = Counter((p.table, p.column, p.severity, p.reason) for p in self.problems)
        keys = sorted(
            counts,
            key=lambda k: (_TABLES.index(k[0]), k[2] != "error", -counts[k], k[1] or "", k[3]),
        )
        return pd.DataFrame(
            {
                "table": pd.Series([k[0] for k in keys], dtype="str"),
                "column": pd.Series([k[1] for k in keys], dtype="str"),
                "severity": pd.Series([k[2] for k in keys], dtype="str"),
                "reason": pd.Series([k[3] for k in keys], dtype="str"),
                "rows": np.array([counts[k] for k in keys], dtype=np.int64),
            }
        )


# ---------------------------------------------------------------------------------------------
# Parsing helpers (vectorised; never raise on bad cells)
# ---------------------------------------------------------------------------------------------

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
    # Skipping a no-op mask saves ~1 ms per column on small frames (pandas overhead).
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
        # Arrow's string->double cast is ~20x faster than to_numeric; it rejects the same
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
class _Parsed:
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


def _parse_sessions(df: pd.DataFrame, profile: InstrumentProfile | None) -> _Parsed:
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
    return _Parsed(pd.DataFrame(out), present, valid)


def _parse_clients(df: pd.DataFrame) -> _Parsed:
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
    return _Parsed(pd.DataFrame(out), present, valid)


def _with_index(frame: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    return frame.set_axis(like.index, axis=0)


def normalise_sessions(df: pd.DataFrame, profile: InstrumentProfile) -> pd.DataFrame:
    """The ``sessions`` table in contract types, keeping only contract columns in order.

    Never raises on bad cells: what cannot be parsed becomes missing, and
    :func:`validate_tables` reports it. Absent columns come back all-missing.

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
    return _with_index(_parse_sessions(df, profile).frame, df)


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
    return _with_index(_parse_clients(df).frame, df)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


class _Collector:
    """Problems gathered as (table, positions, column, reason, severity) chunks, sorted at the end."""

    def __init__(self) -> None:
        self.chunks: list[tuple[Table, np.ndarray, str | None, str, Severity]] = []

    def rows(
        self,
        table: Table,
        mask: np.ndarray,
        column: str | None,
        reason: str,
        severity: Severity = "error",
    ) -> None:
        positions = np.flatnonzero(mask)
        if positions.size:
            self.chunks.append((table, positions.astype(np.int64), column, reason, severity))

    def table(
        self, table: Table, column: str | None, reason: str, severity: Severity = "error"
    ) -> None:
        self.chunks.append((table, np.array([-1], dtype=np.int64), column, reason, severity))

    def problems(self, column_order: dict[Table, tuple[str, ...]]) -> tuple[Problem, ...]:
        if not self.chunks:
            return ()

        def chunk_key(i: int) -> tuple[int, int, str, str]:
            table, _, column, reason, _ = self.chunks[i]
            order = column_order[table]
            rank = -1 if column is None else (order + (column,)).index(column)
            return (_TABLES.index(table), rank, column or "", reason)

        order = sorted(range(len(self.chunks)), key=chunk_key)
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        rows = np.concatenate([ch[1] for ch in self.chunks])
        chunk = np.repeat(np.arange(len(self.chunks)), [ch[1].size for ch in self.chunks])
        tables = np.array([_TABLES.index(ch[0]) for ch in self.chunks])[chunk]
        idx = np.lexsort((rank[chunk], rows, tables))
        ch = self.chunks
        return tuple(
            Problem(ch[k][0], None if r < 0 else r, ch[k][2], ch[k][3], ch[k][4])
            for r, k in zip(rows[idx].tolist(), chunk[idx].tolist(), strict=True)
        )

    def bad_rows(self, table: Table) -> np.ndarray:
        parts = [ch[1] for ch in self.chunks if ch[0] == table and ch[4] == "error"]
        if not parts:
            return np.empty(0, dtype=np.int64)
        rows = np.unique(np.concatenate(parts))
        return rows[rows >= 0]


def _check_columns(
    col: _Collector,
    table: Table,
    df: pd.DataFrame,
    required: Sequence[str],
    known: Sequence[str],
) -> set[str]:
    """Report missing required and unknown columns; return the contract columns present."""
    names = [str(name) for name in df.columns]
    for name in required:
        if name not in names:
            col.table(table, name, MISSING_COLUMN)
    for position, name in enumerate(names, start=1):
        if name not in known and not name.startswith(_ALLIANCE_PREFIX):
            col.table(table, None, unknown_column(position), "warning")
    return {name for name in names if name in known}


def _resolve_profile(
    col: _Collector, sessions: pd.DataFrame, profile: InstrumentProfile | None
) -> InstrumentProfile | None:
    """The profile to check ratings against, reporting alliance columns that do not fit it."""
    alliance = [str(n) for n in sessions.columns if str(n).startswith(_ALLIANCE_PREFIX)]
    if profile is None:
        profile = infer_profile(alliance)
        if profile is None:
            col.table("sessions", None, no_profile_match(alliance))
        return profile
    for name in alliance:
        if name not in profile.columns:
            col.table("sessions", name, alliance_not_in_profile(profile))
    for name in profile.columns:
        if name not in alliance:
            col.table("sessions", name, MISSING_COLUMN)
    return profile


def _duplicated(keys: np.ndarray) -> np.ndarray:
    """Mask of entries whose key occurs more than once (every occurrence)."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return np.asarray(counts[inverse.reshape(-1)] > 1)


def _session_rules(
    col: _Collector, parsed: _Parsed, has: set[str], profile: InstrumentProfile | None
) -> None:
    """Row rules within ``sessions``."""
    s, valid, present = parsed.frame, parsed.valid, parsed.present
    for name in (c.CLIENT_ID, c.CLINIC_ID, c.THERAPIST_ID):
        if name in has:
            col.rows("sessions", ~valid[name], name, EMPTY_ID)
    if c.SESSION_NUMBER in has:
        col.rows("sessions", ~valid[c.SESSION_NUMBER], c.SESSION_NUMBER, SESSION_NUMBER_INVALID)
    if c.SESSION_DATE in has:
        col.rows("sessions", ~valid[c.SESSION_DATE], c.SESSION_DATE, DATE_NOT_ISO)
    if c.ATTENDANCE in has:
        col.rows("sessions", ~valid[c.ATTENDANCE], c.ATTENDANCE, UNKNOWN_ATTENDANCE)

    if {c.CLIENT_ID, c.SESSION_NUMBER} <= has:
        keyed = valid[c.CLIENT_ID] & valid[c.SESSION_NUMBER]
        codes = pd.factorize(s[c.CLIENT_ID])[0].astype(np.int64)
        number = np.nan_to_num(s[c.SESSION_NUMBER].to_numpy(dtype="float64")).astype(np.int64)
        key = codes * (SESSION_NUMBER_MAX + 1) + number
        dup = np.zeros(len(s), dtype=bool)
        dup[keyed] = _duplicated(key[keyed])
        col.rows("sessions", dup, c.SESSION_NUMBER, DUPLICATE_SESSION_NUMBER)
        keyed &= ~dup
        if c.SESSION_DATE in has:
            _dates_backwards(col, codes, number, s[c.SESSION_DATE], keyed & valid[c.SESSION_DATE])

    if profile is not None:
        attended = s[c.ATTENDANCE].eq(c.ATTENDED).to_numpy()
        not_attended = valid[c.ATTENDANCE] & ~attended
        for name in profile.columns:
            if name not in has:
                continue
            ratings = s[name].to_numpy()
            col.rows("sessions", present[name] & ~valid[name], name, RATING_NOT_NUMERIC)
            with np.errstate(invalid="ignore"):
                outside = valid[name] & ~(
                    (ratings >= profile.scale_min) & (ratings <= profile.scale_max)
                )
            col.rows("sessions", outside, name, rating_out_of_range(profile))
            col.rows("sessions", present[name] & not_attended, name, RATING_NOT_ATTENDED)


def _dates_backwards(
    col: _Collector, codes: np.ndarray, number: np.ndarray, dates: pd.Series, usable: np.ndarray
) -> None:
    """Flag a row whose date is before that of the client's preceding session_number."""
    pos = np.flatnonzero(usable)
    if pos.size < 2:
        return
    day = dates.to_numpy()[pos].astype("datetime64[D]").astype(np.int64)
    order = np.lexsort((number[pos], codes[pos]))
    same_client = codes[pos][order][1:] == codes[pos][order][:-1]
    earlier = day[order][1:] < day[order][:-1]
    flagged = np.zeros(len(usable), dtype=bool)
    flagged[pos[order][1:][same_client & earlier]] = True
    col.rows("sessions", flagged, c.SESSION_DATE, DATE_BACKWARDS)


def _client_rules(col: _Collector, parsed: _Parsed, has: set[str]) -> None:
    """Row rules within ``clients``."""
    valid, present = parsed.valid, parsed.present
    for name in (c.CLIENT_ID, c.CLINIC_ID, c.THERAPIST_ID):
        if name in has:
            col.rows("clients", ~valid[name], name, EMPTY_ID)
    if c.CLIENT_ID in has:
        ids = parsed.frame[c.CLIENT_ID]
        dup = (ids.duplicated(keep=False) & ids.notna()).to_numpy()
        col.rows("clients", dup, c.CLIENT_ID, DUPLICATE_CLIENT)
    if c.INTAKE_DATE in has:
        col.rows("clients", ~valid[c.INTAKE_DATE], c.INTAKE_DATE, DATE_NOT_ISO)
    if c.OUTCOME in has:
        col.rows("clients", ~valid[c.OUTCOME], c.OUTCOME, UNKNOWN_OUTCOME)
    if c.AGE in has:
        col.rows("clients", present[c.AGE] & ~valid[c.AGE], c.AGE, AGE_INVALID)


def _joint_codes(left: pd.Series, right: pd.Series) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of two string columns over one shared vocabulary (-1 = missing).

    Factorising once and comparing integers avoids ``Series.isin`` on Arrow strings, which
    builds a Python list of the values (about 4 s per million rows, measured).
    """
    codes, uniques = pd.factorize(pd.concat([left, right], ignore_index=True))
    codes = codes.astype(np.int64)
    return codes[: len(left)], codes[len(left) :], len(uniques)


def _cross_rules(
    col: _Collector,
    sp: _Parsed,
    s_has: set[str],
    cp: _Parsed,
    c_has: set[str],
) -> None:
    """Rules linking sessions to their client row."""
    if not (c.CLIENT_ID in s_has and c.CLIENT_ID in c_has):
        return
    s, cl = sp.frame, cp.frame
    s_code, c_code, n_ids = _joint_codes(s[c.CLIENT_ID], cl[c.CLIENT_ID])
    s_linked, c_linked = s_code >= 0, c_code >= 0
    rows_per_id = np.bincount(c_code[c_linked], minlength=n_ids)
    sessions_per_id = np.bincount(s_code[s_linked], minlength=n_ids)
    known = s_linked.copy()
    known[s_linked] = rows_per_id[s_code[s_linked]] > 0
    col.rows("sessions", s_linked & ~known, c.CLIENT_ID, UNKNOWN_CLIENT)
    has_sessions = c_linked.copy()
    has_sessions[c_linked] = sessions_per_id[c_code[c_linked]] > 0
    col.rows("clients", c_linked & ~has_sessions, c.CLIENT_ID, NO_SESSIONS, "warning")

    # Compare with the client row only when it is unambiguous (a duplicated client_id is
    # already an error on the clients side).
    row_of_id = np.full(n_ids, -1, dtype=np.int64)
    unique = c_linked.copy()
    unique[c_linked] = rows_per_id[c_code[c_linked]] == 1
    row_of_id[c_code[unique]] = np.flatnonzero(unique)
    if n_ids == 0:  # no usable id on either side: nothing to link
        return
    client_row = np.where(s_linked, row_of_id[np.maximum(s_code, 0)], -1)
    linked = client_row >= 0
    at = np.maximum(client_row, 0)
    if c.CLINIC_ID in s_has and c.CLINIC_ID in c_has:
        s_clinic, c_clinic, _ = _joint_codes(s[c.CLINIC_ID], cl[c.CLINIC_ID])
        their = c_clinic[at] if len(cl) else np.full(len(s), -1)
        both = linked & (s_clinic >= 0) & (their >= 0)
        col.rows("sessions", both & (s_clinic != their), c.CLINIC_ID, CLINIC_MISMATCH)
    if c.SESSION_DATE in s_has and c.INTAKE_DATE in c_has and len(cl):
        intake = cl[c.INTAKE_DATE].to_numpy()[at]
        both = linked & sp.valid[c.SESSION_DATE] & cp.valid[c.INTAKE_DATE][at]
        before = both & (s[c.SESSION_DATE].to_numpy() < intake)
        col.rows("sessions", before, c.SESSION_DATE, BEFORE_INTAKE)


@dataclass(frozen=True, eq=False)
class CheckedTables:
    """A :class:`ValidationReport` and both tables normalised in the same pass.

    ``sessions`` and ``clients`` are what :func:`normalise_sessions` and
    :func:`normalise_clients` return (input index kept); when ``report.profile`` is None,
    ``sessions`` has no rating columns.
    """

    report: ValidationReport
    sessions: pd.DataFrame
    clients: pd.DataFrame


def validate_tables(
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    profile: InstrumentProfile | None = None,
) -> ValidationReport:
    """Check both tables against the data contract and report every problem at once.

    Parameters
    ----------
    sessions
        One row per scheduled appointment: ``client_id``, ``clinic_id``, ``therapist_id``,
        ``session_number``, ``session_date``, ``attendance`` and the profile's
        ``alliance_<element>`` ratings. Raw text (as read from CSV) or typed; any index.
    clients
        One row per episode: ``client_id``, ``clinic_id``, ``therapist_id``, ``intake_date``,
        ``outcome``; optional ``age`` (whole years), ``gender``, ``referral_source``.
    profile
        The instrument profile of the ratings. ``None`` infers it from the ``alliance_*``
        columns; when none matches, a table-level error lists the known profiles.

    Returns
    -------
    ValidationReport
        Every problem with its 0-based row position, column and reason, in (table, row, column)
        order; ``ok`` is True when there are no errors. Never raises on bad cell values.
    """
    return validate_and_normalise(sessions, clients, profile).report


def validate_and_normalise(
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    profile: InstrumentProfile | None = None,
) -> CheckedTables:
    """:func:`validate_tables` and both normalisers in one pass (each cell is parsed once).

    Parameters are those of :func:`validate_tables`.
    """
    col = _Collector()
    profile = _resolve_profile(col, sessions, profile)
    rating_columns = profile.columns if profile is not None else ()
    s_has = _check_columns(
        col, "sessions", sessions, c.SESSION_COLUMNS, (*c.SESSION_COLUMNS, *rating_columns)
    )
    c_has = _check_columns(
        col,
        "clients",
        clients,
        c.CLIENT_REQUIRED_COLUMNS,
        (*c.CLIENT_REQUIRED_COLUMNS, *c.CLIENT_OPTIONAL_COLUMNS),
    )
    sp = _parse_sessions(sessions, profile)
    cp = _parse_clients(clients)
    _session_rules(col, sp, s_has, profile)
    _client_rules(col, cp, c_has)
    _cross_rules(col, sp, s_has, cp, c_has)

    column_order: dict[Table, tuple[str, ...]] = {
        "sessions": (*c.SESSION_COLUMNS, *rating_columns),
        "clients": (*c.CLIENT_REQUIRED_COLUMNS, *c.CLIENT_OPTIONAL_COLUMNS),
    }
    report = ValidationReport(
        problems=col.problems(column_order),
        profile=profile,
        bad_session_rows=col.bad_rows("sessions"),
        bad_client_rows=col.bad_rows("clients"),
        n_sessions=len(sessions),
        n_clients=len(clients),
    )
    return CheckedTables(report, _with_index(sp.frame, sessions), _with_index(cp.frame, clients))
