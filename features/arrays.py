"""Session histories as contiguous numpy arrays with client segments: the input of the kernels.

Rows are grouped by client (a *segment*: ``offsets[c]:offsets[c + 1]``) and sorted by
``session_number`` inside each segment. :meth:`SessionArrays.from_frames` and
:meth:`SessionArrays.from_episodes` also order segments by length, then client, so that segments
of equal length form runs (:attr:`SessionArrays.runs`) the kernel reshapes into
``(n_clients, length)`` blocks; any segment order is correct, the ordering only makes it fast.
Outputs are ordered by ``client_rank`` either way.

The serving path builds one client's arrays directly with :meth:`SessionArrays.single_client`,
without pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from features.contract import (
    AGE,
    ATTENDANCE,
    ATTENDANCE_CODES,
    CLIENT_ID,
    INTAKE_DATE,
    OUTCOME,
    OUTCOME_CODES,
    SESSION_DATE,
    SESSION_NUMBER,
)
from features.profiles import InstrumentProfile

#: Up to this many rows, code lookups use Python dicts (pandas' per-call overhead dominates).
_SMALL_FRAME = 512
#: Upper bound on session numbers: keeps the (segment, session_number) sort key inside int64.
MAX_SESSION_NUMBER = 1_000_000


def _days(values: Any, column: str) -> np.ndarray:
    """Dates (datetime64 of any unit, tz-naive) -> float64 days since 1970-01-01, NaN for NaT."""
    arr = np.asarray(values)
    if arr.dtype.kind != "M":
        try:
            arr = arr.astype("datetime64[D]")
        except (TypeError, ValueError):
            raise ValueError(f"column {column!r} must hold dates (datetime64)") from None
    day = arr.astype("datetime64[D]")
    out = day.astype(np.int64).astype(np.float64)
    out[np.isnat(day)] = np.nan
    return out


@dataclass(frozen=True, eq=False)
class SessionArrays:
    """Many clients' appointment histories as flat arrays with segment offsets.

    Attributes
    ----------
    profile
        Instrument profile the ``ratings`` rows follow.
    client_id
        ``(n_clients,)`` object array: the client of each segment.
    client_rank
        ``(n_clients,)`` int64: rank of each segment's client in sorted ``client_id`` order;
        output frames are ordered by it.
    offsets
        ``(n_clients + 1,)`` int64: segment ``c`` is rows ``offsets[c]:offsets[c + 1]``.
    session_number
        ``(n_rows,)`` int64, >= 1, strictly increasing inside each segment.
    day
        ``(n_rows,)`` int64: appointment date in days since 1970-01-01.
    attendance
        ``(n_rows,)`` int8: index into :data:`features.contract.ATTENDANCE_CODES`.
    ratings
        ``(n_elements, n_rows)`` float64, one row per profile element (``profile.columns``
        order); NaN = not rated.
    intake_day
        ``(n_clients,)`` float64: intake date in days since 1970-01-01 (NaN = unknown).
    age
        ``(n_clients,)`` float64: age in years (NaN = unknown).
    outcome
        ``(n_clients,)`` int8: index into :data:`features.contract.OUTCOME_CODES`, -1 = unknown.
    """

    profile: InstrumentProfile
    client_id: np.ndarray
    client_rank: np.ndarray
    offsets: np.ndarray
    session_number: np.ndarray
    day: np.ndarray
    attendance: np.ndarray
    ratings: np.ndarray
    intake_day: np.ndarray
    age: np.ndarray
    outcome: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.session_number.shape[0])

    @property
    def n_clients(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @cached_property
    def lengths(self) -> np.ndarray:
        """``(n_clients,)`` appointments per client."""
        return np.diff(self.offsets)

    @cached_property
    def seg_of_row(self) -> np.ndarray:
        """``(n_rows,)`` segment index of every row."""
        if self.n_clients == 1:
            return np.zeros(self.n_rows, dtype=np.int64)
        return np.repeat(np.arange(self.n_clients, dtype=np.int64), self.lengths)

    @cached_property
    def rank(self) -> np.ndarray:
        """``(n_rows,)`` position of every row inside its segment (0 = first appointment)."""
        ar = np.arange(self.n_rows, dtype=np.int64)
        if self.n_clients == 1:
            return ar
        return ar - self.offsets[:-1][self.seg_of_row]

    @cached_property
    def runs(self) -> tuple[tuple[int, int, int], ...]:
        """Maximal runs of consecutive equal-length segments: ``(first_row, end_row, length)``."""
        lengths = self.lengths
        if lengths.shape[0] == 0:
            return ()
        cut = np.flatnonzero(lengths[1:] != lengths[:-1]) + 1
        starts = np.concatenate(([0], cut))
        ends = np.concatenate((cut, [lengths.shape[0]]))
        off = self.offsets
        return tuple(
            (int(off[a]), int(off[b]), int(lengths[a]))
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
            if lengths[a] > 0
        )

    def take_segments(self, segments: np.ndarray) -> SessionArrays:
        """The clients at segment positions ``segments`` (ascending keeps length runs), copied."""
        lengths = self.lengths[segments]
        offsets = np.zeros(segments.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rows = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(
            self.offsets[:-1][segments] - offsets[:-1], lengths
        )
        return replace(
            self,
            client_id=self.client_id[segments],
            client_rank=self.client_rank[segments],
            offsets=offsets,
            session_number=self.session_number[rows],
            day=self.day[rows],
            attendance=self.attendance[rows],
            ratings=self.ratings[:, rows],
            intake_day=self.intake_day[segments],
            age=self.age[segments],
            outcome=self.outcome[segments],
        )

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_frames(
        cls, sessions: pd.DataFrame, clients: pd.DataFrame, profile: InstrumentProfile
    ) -> SessionArrays:
        """Sort and pack normalised ``sessions`` and ``clients`` frames.

        Parameters
        ----------
        sessions
            One row per scheduled appointment, any row order: ``client_id``, ``session_number``
            (int >= 1, unique per client), ``session_date`` (datetime64), ``attendance``
            (a code of :data:`~features.contract.ATTENDANCE_CODES`) and the profile's
            ``alliance_<element>`` rating columns (float, NaN = not rated).
        clients
            One row per client: ``client_id`` and ``intake_date`` (datetime64); optional
            ``outcome`` and ``age`` (years). Every client in ``sessions`` must be present.
        profile
            Instrument profile naming the rating columns.

        Raises
        ------
        ValueError
            On a missing column, a duplicated session number, an unknown attendance code, a
            missing date, or a client absent from ``clients``. Messages name the row position
            and column, never a value.
        """
        for col in (CLIENT_ID, SESSION_NUMBER, SESSION_DATE, ATTENDANCE, *profile.columns):
            if col not in sessions.columns:
                raise ValueError(f"sessions: missing column {col!r}")
        for col in (CLIENT_ID, INTAKE_DATE):
            if col not in clients.columns:
                raise ValueError(f"clients: missing column {col!r}")

        small = len(sessions) <= _SMALL_FRAME
        codes, uniques = _factorize_ids(sessions[CLIENT_ID], small)
        sn = _int_column(sessions, SESSION_NUMBER)
        bad = (sn < 1) | (sn > MAX_SESSION_NUMBER)
        if bad.any():
            raise ValueError(
                f"sessions row {int(np.argmax(bad))}: {SESSION_NUMBER!r} must be an integer "
                f"between 1 and {MAX_SESSION_NUMBER}"
            )

        n_clients = len(uniques)
        seg_order, lengths, order = _segment_order(codes, sn, n_clients)
        day = _days(sessions[SESSION_DATE].to_numpy(), SESSION_DATE)
        if np.isnan(day).any():
            raise ValueError(
                f"sessions row {int(np.argmax(np.isnan(day)))}: missing {SESSION_DATE!r}"
            )
        att = _lookup(sessions[ATTENDANCE], ATTENDANCE_CODES, small)
        if (att < 0).any():
            raise ValueError(
                f"sessions row {int(np.argmax(att < 0))}: {ATTENDANCE!r} is not one of "
                f"{', '.join(ATTENDANCE_CODES)}"
            )
        ratings = np.empty((len(profile.columns), len(order)), dtype=np.float64)
        for i, col in enumerate(profile.columns):
            try:
                values = sessions[col].to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                raise ValueError(f"sessions: column {col!r} must be numeric") from None
            np.take(values, order, out=ratings[i])

        where = _client_rows(clients[CLIENT_ID], uniques, len(clients) <= _SMALL_FRAME)[seg_order]
        intake = _days(clients[INTAKE_DATE].to_numpy(), INTAKE_DATE)[where]
        age = (
            clients[AGE].to_numpy(dtype=np.float64, na_value=np.nan)[where]
            if AGE in clients.columns
            else np.full(n_clients, np.nan)
        )
        outcome = (
            _lookup(clients[OUTCOME], OUTCOME_CODES, len(clients) <= _SMALL_FRAME)[where]
            if OUTCOME in clients.columns
            else np.full(n_clients, -1)
        )
        offsets = np.zeros(n_clients + 1, dtype=np.int64)
        np.cumsum(lengths[seg_order], out=offsets[1:])
        return cls(
            profile=profile,
            client_id=np.asarray(uniques, dtype=object)[seg_order],
            client_rank=seg_order.astype(np.int64),
            offsets=offsets,
            session_number=sn[order],
            day=day[order].astype(np.int64),
            attendance=att[order].astype(np.int8),
            ratings=ratings,
            intake_day=intake,
            age=age,
            outcome=outcome.astype(np.int8),
        )

    @classmethod
    def from_episodes(
        cls,
        profile: InstrumentProfile,
        *,
        client: np.ndarray,
        session_number: np.ndarray,
        day: np.ndarray,
        attendance: np.ndarray,
        ratings: np.ndarray,
        intake_day: np.ndarray,
        age: np.ndarray,
    ) -> SessionArrays:
        """Many clients' histories from flat numpy arrays, without pandas (batch serving).

        Parameters
        ----------
        profile
            Instrument profile.
        client
            ``(n_rows,)`` int: the client (episode) of each appointment, ``0..n_clients-1``;
            every client must have at least one appointment. It is also the ``client_id``.
        session_number, day
            ``(n_rows,)`` int: appointment numbers (>= 1, unique per client) and dates in days
            since 1970-01-01; any row order.
        attendance
            ``(n_rows,)`` int8 index into :data:`~features.contract.ATTENDANCE_CODES`.
        ratings
            ``(n_elements, n_rows)`` float, NaN = not rated.
        intake_day, age
            ``(n_clients,)`` float, NaN = unknown.
        """
        codes = np.asarray(client, dtype=np.int64)
        n_clients = int(np.asarray(intake_day).shape[0])
        sn = np.asarray(session_number, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= n_clients):
            raise ValueError("client must index 0..n_clients-1")
        if (sn < 1).any() or (sn > MAX_SESSION_NUMBER).any():
            raise ValueError(f"{SESSION_NUMBER!r} must be between 1 and {MAX_SESSION_NUMBER}")
        seg_order, lengths, order = _segment_order(codes, sn, n_clients)
        if (lengths == 0).any():
            raise ValueError("every client needs at least one appointment")
        offsets = np.zeros(n_clients + 1, dtype=np.int64)
        np.cumsum(lengths[seg_order], out=offsets[1:])
        return cls(
            profile=profile,
            client_id=seg_order.astype(object),
            client_rank=seg_order.astype(np.int64),
            offsets=offsets,
            session_number=sn[order],
            day=np.asarray(day, dtype=np.int64)[order],
            attendance=np.asarray(attendance, dtype=np.int8)[order],
            ratings=np.ascontiguousarray(np.asarray(ratings, dtype=np.float64)[:, order]),
            intake_day=np.asarray(intake_day, dtype=np.float64)[seg_order],
            age=np.asarray(age, dtype=np.float64)[seg_order],
            outcome=np.full(n_clients, -1, dtype=np.int8),
        )

    @classmethod
    def single_client(
        cls,
        profile: InstrumentProfile,
        *,
        session_number: Sequence[int] | np.ndarray,
        session_date: Sequence[Any] | np.ndarray,
        attendance: Sequence[str] | np.ndarray,
        ratings: dict[str, Sequence[float | None]] | np.ndarray,
        intake_date: Any = None,
        age: float | None = None,
        client_id: Any = "",
    ) -> SessionArrays:
        """One client's history without pandas (the serving path).

        Parameters
        ----------
        profile
            Instrument profile.
        session_number, session_date, attendance
            Per appointment, any order: numbers >= 1 (unique), dates (``datetime.date``,
            ``datetime64`` or ISO strings), attendance codes.
        ratings
            Element name -> ratings per appointment (None/NaN = not rated), or an
            ``(n_elements, n_appointments)`` float array in ``profile.element_names`` order.
        intake_date
            Intake date or None if unknown.
        age
            Age in years or None.
        client_id
            Carried through to the output index only.
        """
        sn = np.array(session_number, dtype=np.int64)  # a copy: never aliases the caller's
        n = sn.shape[0]
        if n == 0:
            raise ValueError("at least one appointment is needed")
        if isinstance(ratings, np.ndarray):
            r = np.array(ratings, dtype=np.float64)
        else:
            unknown = set(ratings) - set(profile.element_names)
            if unknown:
                raise ValueError(f"ratings: unknown element(s) for profile {profile.name!r}")
            nan_row = [np.nan] * n
            r = np.array(
                [
                    [np.nan if v is None else v for v in ratings.get(e, nan_row)]
                    for e in profile.element_names
                ],
                dtype=np.float64,
            )
        if r.shape != (len(profile.elements), n):
            raise ValueError("ratings: one value per element and appointment is needed")
        try:
            att = np.array([_ATTENDANCE_INDEX[a] for a in attendance], dtype=np.int8)
        except KeyError:
            raise ValueError(
                f"{ATTENDANCE!r} must be one of {', '.join(ATTENDANCE_CODES)}"
            ) from None
        day = np.asarray(session_date, dtype="datetime64[D]")
        if att.shape[0] != n or day.shape[0] != n:
            raise ValueError("session_number, session_date and attendance differ in length")
        nat = np.isnat(day)
        if nat.any():
            raise ValueError(f"row {int(np.argmax(nat))}: missing {SESSION_DATE!r}")
        # One unsigned comparison checks 1 <= sn <= MAX_SESSION_NUMBER (below 1 wraps around).
        if ((sn - 1).view(np.uint64) >= MAX_SESSION_NUMBER).any():
            raise ValueError(f"{SESSION_NUMBER!r} must be between 1 and {MAX_SESSION_NUMBER}")
        # Requests usually list appointments in order: strictly increasing numbers need no sort
        # (and cannot hold duplicates).
        if n > 1 and not (sn[1:] > sn[:-1]).all():
            order = np.argsort(sn, kind="stable")
            sn = sn[order]
            if (sn[1:] == sn[:-1]).any():
                raise ValueError(f"duplicate {SESSION_NUMBER!r}")
            day, att, r = day[order], att[order], r[:, order]
        intake = (
            np.nan
            if intake_date is None
            else float(np.datetime64(intake_date, "D").astype(np.int64))
        )
        return cls(
            profile=profile,
            client_id=np.array([client_id], dtype=object),
            client_rank=np.zeros(1, dtype=np.int64),
            offsets=np.array([0, n], dtype=np.int64),
            session_number=sn,
            day=day.astype(np.int64),
            attendance=att,
            ratings=np.ascontiguousarray(r),
            intake_day=np.array([intake]),
            age=np.array([np.nan if age is None else float(age)]),
            outcome=np.array([-1], dtype=np.int8),
        )


def ratings_matrix(
    mappings: list[dict[str, float | None]], profile: InstrumentProfile
) -> tuple[np.ndarray, np.ndarray]:
    """The ratings of many appointments, each a dict keyed by element name, as one matrix.

    Returns ``(ratings, n_keys)``: ``ratings`` is ``(n_elements, len(mappings))`` float64 in
    ``profile.element_names`` order, NaN where an element is missing or None; ``n_keys[i]`` is
    ``len(mappings[i])``, so that a caller can tell that a dict names an element outside the
    profile (more keys than elements found). Values are converted as ``float()`` does; an item
    that is not a dict, or a value that is not a number, raises ``TypeError``.
    """
    mappings = list(mappings)
    for i, m in enumerate(mappings):
        if not isinstance(m, dict):
            raise TypeError(f"ratings: item {i} is not a dict")
    names = profile.element_names
    ratings = np.array(
        [[_rating(m.get(e)) for m in mappings] for e in names], dtype=np.float64
    ).reshape(len(names), len(mappings))
    n_keys = np.array([len(m) for m in mappings], dtype=np.int64)
    return ratings, n_keys


def _rating(value: Any) -> float:
    """One rating as a float, NaN for None; text is refused, not parsed."""
    if value is None:
        return np.nan
    if isinstance(value, str | bytes | bytearray):
        raise TypeError("ratings: a rating must be a number")
    return float(value)


#: Attendance code -> its index in :data:`~features.contract.ATTENDANCE_CODES`.
_ATTENDANCE_INDEX = {code: i for i, code in enumerate(ATTENDANCE_CODES)}


def _int_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    """An integer column as int64, rejecting missing or fractional values."""
    values = frame[column].to_numpy()
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    as_float = pd.to_numeric(frame[column], errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    bad = np.isnan(as_float) | (as_float != np.round(as_float))
    if bad.any():
        raise ValueError(f"sessions row {int(np.argmax(bad))}: {column!r} must be an integer")
    return as_float.astype(np.int64)


def _segment_order(
    codes: np.ndarray, sn: np.ndarray, n_clients: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment order (by length, then client), segment lengths and the row order that sorts
    rows by (segment, session_number). Raises on a duplicated session number."""
    if n_clients == 1:
        seg_order = np.zeros(1, dtype=np.int64)
        lengths = np.array([len(sn)], dtype=np.int64)
        order = np.argsort(sn, kind="stable")
        key_sorted = sn[order]
    else:
        lengths = np.bincount(codes, minlength=n_clients)
        # Segments ordered by (length, client); see the module docstring.
        seg_order = np.argsort(lengths, kind="stable")
        seg_pos = np.empty(n_clients, dtype=np.int64)
        seg_pos[seg_order] = np.arange(n_clients, dtype=np.int64)
        key = seg_pos[codes] * (MAX_SESSION_NUMBER + 1) + sn
        order = np.argsort(key, kind="stable")
        key_sorted = key[order]
    dup = np.flatnonzero(key_sorted[1:] == key_sorted[:-1])
    if dup.size:
        raise ValueError(
            f"sessions row {int(order[dup[0] + 1])}: duplicate {SESSION_NUMBER!r} for its client"
        )
    return seg_order, lengths, order


def _factorize_ids(ids: pd.Series, small: bool) -> tuple[np.ndarray, list[Any] | np.ndarray]:
    """Client ids -> (int64 code per row, sorted unique ids); missing ids are rejected."""
    missing = ids.isna().to_numpy()
    if missing.any():
        raise ValueError(f"sessions row {int(np.argmax(missing))}: missing {CLIENT_ID!r}")
    if small:
        values = ids.tolist()
        uniques = sorted(set(values))
        pos = {u: i for i, u in enumerate(uniques)}
        return np.fromiter((pos[v] for v in values), np.int64, len(values)), uniques
    codes, uniq = pd.factorize(ids, sort=True)
    return codes.astype(np.int64, copy=False), np.asarray(uniq, dtype=object)


def _lookup(values: pd.Series, categories: tuple[str, ...], small: bool) -> np.ndarray:
    """Position of each value in ``categories`` (int8), -1 if absent or missing."""
    if small:
        pos = {c: i for i, c in enumerate(categories)}
        return np.fromiter((pos.get(v, -1) for v in values.tolist()), np.int8, len(values))
    return pd.Index(categories).get_indexer(pd.Index(values)).astype(np.int8)


def _client_rows(keys: pd.Series, uniques: list[Any] | np.ndarray, small: bool) -> np.ndarray:
    """Row of ``clients`` holding each id in ``uniques``; rejects duplicated or absent clients."""
    if small:
        pos: dict[Any, int] = {}
        for i, k in enumerate(keys.tolist()):
            if k in pos:
                raise ValueError(f"clients row {i}: duplicate {CLIENT_ID!r}")
            pos[k] = i
        where = np.fromiter((pos.get(u, -1) for u in uniques), np.int64, len(uniques))
    else:
        dup = keys.duplicated().to_numpy()
        if dup.any():
            raise ValueError(f"clients row {int(np.argmax(dup))}: duplicate {CLIENT_ID!r}")
        where = pd.Index(keys).get_indexer(uniques).astype(np.int64)
    if (where < 0).any():
        raise ValueError(
            f"sessions: {int((where < 0).sum())} client(s) have sessions but no row in clients"
        )
    return where
