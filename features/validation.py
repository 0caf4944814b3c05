"""The data contract's checks: every reason text, the rules within an episode, and the
validation of whole ``sessions`` and ``clients`` tables.

Pure: frames or episodes in, problems out; no I/O, no logging. The CLI, training, the scorer and
the HTTP API all check with this module, so a client sees the same reason text wherever a
problem is caught.

- :func:`contract_violations`: the rules that hold within an episode (session numbers, dates,
  attendance codes, ratings against the profile's scale), over
  :class:`~features.episodes.Episodes`. Written once and vectorised: the scorer runs it on one
  request or a million rows alike.
- :func:`validate_and_normalise`: a whole pair of tables, as read from files. It parses every
  cell (:mod:`features.normalise`), reports what cannot be read, joins sessions to clients
  (unknown or duplicated clients, a clinic that differs), then applies the episode rules to the
  joined tables.

Every reason text lives in this module, as a module-level constant or a small function of the
instrument profile. Reasons name the class of problem and what is allowed, never the offending
value: identifiers, ratings and dates can identify a client. ``docs/data-contract.md`` lists
every reason verbatim (a test keeps them in step).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import pandas as pd

from features import contract as c
from features.contract import AGE_MAX, AGE_MIN, SESSION_NUMBER_MAX
from features.episodes import Episodes
from features.normalise import Parsed, parse_clients, parse_sessions, with_index
from features.normalise import normalise_clients as normalise_clients  # re-exported
from features.normalise import normalise_sessions as normalise_sessions  # re-exported
from features.profiles import ALLIANCE_PREFIX as _ALLIANCE_PREFIX
from features.profiles import PROFILES, InstrumentProfile, infer_profile

Table = Literal["sessions", "clients"]
Severity = Literal["error", "warning"]

_ATTENDED = c.ATTENDANCE_CODES.index(c.ATTENDED)

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
# The rules within an episode
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """One contract rule broken at some appointments.

    ``appointments`` are positions in the episodes' appointments (int64, sorted); ``column`` is
    the contract column concerned (a rating is ``alliance_<element>``); ``reason`` is one of
    :mod:`features.validation`'s reason texts.
    """

    appointments: np.ndarray
    column: str
    reason: str


def contract_violations(episodes: Episodes) -> tuple[Violation, ...]:
    """The contract rules within each episode, checked over every appointment at once.

    Checks, per appointment: a session_number, a date and an attendance code that could be
    read; session_number unique within the episode; dates not going backwards in
    session_number order (only the immediate predecessor counts); no date before the episode's
    intake; ratings inside the profile's scale and only on attended appointments.

    Returns
    -------
    tuple of Violation
        One per rule broken, in the order above; empty when every episode is fine.
    """
    e = episodes
    out: list[Violation] = []

    def add(mask: np.ndarray, column: str, reason: str) -> None:
        if mask.any():
            out.append(Violation(np.flatnonzero(mask), column, reason))

    sn, day, att, ep = e.session_number, e.day, e.attendance, e.episode
    has_number, has_day, has_code = ~np.isnan(sn), ~np.isnan(day), att >= 0
    add(~has_number, c.SESSION_NUMBER, SESSION_NUMBER_INVALID)
    add(~has_day, c.SESSION_DATE, DATE_NOT_ISO)
    add(~has_code, c.ATTENDANCE, UNKNOWN_ATTENDANCE)

    keyed = (ep >= 0) & has_number
    key = np.where(keyed, ep * (SESSION_NUMBER_MAX + 1) + np.nan_to_num(sn), -1).astype(np.int64)
    duplicate = np.zeros(e.n_appointments, dtype=bool)
    duplicate[keyed] = _repeated(key[keyed])
    add(duplicate, c.SESSION_NUMBER, DUPLICATE_SESSION_NUMBER)

    usable = np.flatnonzero(keyed & ~duplicate & has_day)
    order = usable[np.argsort(key[usable], kind="stable")]
    backwards = np.zeros(e.n_appointments, dtype=bool)
    same_episode = ep[order][1:] == ep[order][:-1]
    backwards[order[1:][same_episode & (day[order][1:] < day[order][:-1])]] = True
    add(backwards, c.SESSION_DATE, DATE_BACKWARDS)

    intake = np.where(ep >= 0, e.intake_day[np.maximum(ep, 0)] if e.n_episodes else np.nan, np.nan)
    with np.errstate(invalid="ignore"):
        add(has_day & (day < intake), c.SESSION_DATE, BEFORE_INTAKE)

    # Ratings: both rules for every element at once, then one entry per element that breaks one.
    p, r = e.profile, e.ratings
    rated = ~np.isnan(r)
    with np.errstate(invalid="ignore"):
        outside = rated & ~((r >= p.scale_min) & (r <= p.scale_max))
    unattended = rated & (has_code & (att != _ATTENDED))
    for j in np.flatnonzero(outside.any(axis=1) | unattended.any(axis=1)).tolist():
        add(outside[j], p.columns[j], rating_out_of_range(p))
        add(unattended[j], p.columns[j], RATING_NOT_ATTENDED)
    return tuple(out)


def empty_episodes(episodes: Episodes) -> np.ndarray:
    """``(n_episodes,)`` bool: episodes without a single appointment (:data:`NO_SESSIONS`)."""
    linked = episodes.episode[episodes.episode >= 0]
    return np.bincount(linked, minlength=episodes.n_episodes) == 0


def _repeated(keys: np.ndarray) -> np.ndarray:
    """Mask of entries whose key occurs more than once (every occurrence)."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return np.asarray(counts[inverse.reshape(-1)] > 1)


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
        self.at(table, np.flatnonzero(mask), column, reason, severity)

    def at(
        self,
        table: Table,
        positions: np.ndarray,
        column: str | None,
        reason: str,
        severity: Severity = "error",
    ) -> None:
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


def _cell_rules(col: _Collector, sp: Parsed, s_has: set[str], cp: Parsed, c_has: set[str],
                profile: InstrumentProfile | None) -> None:  # fmt: skip
    """Cells the parser could not read that the episode rules do not see: empty identifiers,
    ratings that are not numbers, and the clients table's own columns."""
    for table, parsed, has in (("sessions", sp, s_has), ("clients", cp, c_has)):
        for name in (c.CLIENT_ID, c.CLINIC_ID, c.THERAPIST_ID):
            if name in has:
                col.rows(table, ~parsed.valid[name], name, EMPTY_ID)  # type: ignore[arg-type]
    for name in profile.columns if profile is not None else ():
        if name in s_has:
            col.rows("sessions", sp.present[name] & ~sp.valid[name], name, RATING_NOT_NUMERIC)
    if c.INTAKE_DATE in c_has:
        col.rows("clients", ~cp.valid[c.INTAKE_DATE], c.INTAKE_DATE, DATE_NOT_ISO)
    if c.OUTCOME in c_has:
        col.rows("clients", ~cp.valid[c.OUTCOME], c.OUTCOME, UNKNOWN_OUTCOME)
    if c.AGE in c_has:
        col.rows("clients", cp.present[c.AGE] & ~cp.valid[c.AGE], c.AGE, AGE_INVALID)


def _joint_codes(left: pd.Series, right: pd.Series) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of two string columns over one shared vocabulary (-1 = missing).

    Factorising once and comparing integers avoids ``Series.isin`` on Arrow strings, which
    builds a Python list of the values (about 4 s per million rows, measured).
    """
    codes, uniques = pd.factorize(pd.concat([left, right], ignore_index=True))
    codes = codes.astype(np.int64)
    return codes[: len(left)], codes[len(left) :], len(uniques)


def _join_rules(col: _Collector, sp: Parsed, s_has: set[str], cp: Parsed, c_has: set[str]) -> None:
    """Rules linking session rows to their client row: the client exists once, has sessions,
    and is filed under the same clinic."""
    s, cl = sp.frame, cp.frame
    if c.CLIENT_ID in c_has:
        ids = cl[c.CLIENT_ID]
        col.rows("clients", (ids.duplicated(keep=False) & ids.notna()).to_numpy(), c.CLIENT_ID,
                 DUPLICATE_CLIENT)  # fmt: skip
    if not (c.CLIENT_ID in s_has and c.CLIENT_ID in c_has):
        return
    s_code, c_code, n_ids = _joint_codes(s[c.CLIENT_ID], cl[c.CLIENT_ID])
    s_linked, c_linked = s_code >= 0, c_code >= 0
    rows_per_id = np.bincount(c_code[c_linked], minlength=n_ids)
    sessions_per_id = np.bincount(s_code[s_linked], minlength=n_ids)
    duplicate = c_linked.copy()
    duplicate[c_linked] = rows_per_id[c_code[c_linked]] > 1
    known = s_linked.copy()
    known[s_linked] = rows_per_id[s_code[s_linked]] > 0
    col.rows("sessions", s_linked & ~known, c.CLIENT_ID, UNKNOWN_CLIENT)
    has_sessions = c_linked.copy()
    has_sessions[c_linked] = sessions_per_id[c_code[c_linked]] > 0
    col.rows("clients", c_linked & ~has_sessions, c.CLIENT_ID, NO_SESSIONS, "warning")
    if not (c.CLINIC_ID in s_has and c.CLINIC_ID in c_has) or n_ids == 0 or not len(cl):
        return
    # Compared with the client row only when it is unambiguous (a duplicated client_id is
    # already an error on the clients side).
    row_of_id = np.full(n_ids, -1, dtype=np.int64)
    unique = c_linked & ~duplicate
    row_of_id[c_code[unique]] = np.flatnonzero(unique)
    client_row = np.where(s_linked, row_of_id[np.maximum(s_code, 0)], -1)
    s_clinic, c_clinic, _ = _joint_codes(s[c.CLINIC_ID], cl[c.CLINIC_ID])
    their = c_clinic[np.maximum(client_row, 0)]
    both = (client_row >= 0) & (s_clinic >= 0) & (their >= 0)
    col.rows("sessions", both & (s_clinic != their), c.CLINIC_ID, CLINIC_MISMATCH)


#: Stands in for the instrument profile when none matched the rating columns: the episode
#: rules that do not read ratings still run (the report already says no profile matched).
_NO_RATINGS = InstrumentProfile(
    name="none", elements=(), scale_min=0.0, scale_max=1.0, total="mean",
    cutoff_total=0.0, element_cutoff=0.0, drop_points=0.0,
)  # fmt: skip


def _episode_rules(
    col: _Collector, sp: Parsed, s_has: set[str], cp: Parsed, profile: InstrumentProfile | None
) -> None:
    """:func:`contract_violations` on the joined tables; a rule about an absent column is left
    to the missing-column error."""
    episodes = Episodes.from_frames(sp.frame, cp.frame, profile or _NO_RATINGS)
    for v in contract_violations(episodes):
        if v.column in s_has:
            col.at("sessions", v.appointments, v.column, v.reason)


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
    sp = parse_sessions(sessions, profile)
    cp = parse_clients(clients)
    _cell_rules(col, sp, s_has, cp, c_has, profile)
    _join_rules(col, sp, s_has, cp, c_has)
    _episode_rules(col, sp, s_has, cp, profile)

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
    return CheckedTables(report, with_index(sp.frame, sessions), with_index(cp.frame, clients))
