"""Session histories as contiguous numpy arrays with client segments: the input of the kernels.

Rows are grouped by client (a *segment*: ``offsets[c]:offsets[c + 1]``) and sorted by
``session_number`` inside each segment. Segments are ordered by length, then client, so that
segments of equal length form runs (:attr:`SessionArrays.runs`) the kernel reshapes into
``(n_clients, length)`` blocks; any segment order is correct, the ordering only makes it fast.
Outputs are ordered by ``client_rank`` either way.

Arrays are built one way: :meth:`features.episodes.Episodes.pack` (checked episodes, from a file or
a request) calls :meth:`SessionArrays.from_episodes`; :meth:`SessionArrays.take_segments` picks
clients out of packed arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from features.contract import SESSION_NUMBER
from features.profiles import InstrumentProfile

#: Upper bound on session numbers: keeps the (segment, session_number) sort key inside int64.
MAX_SESSION_NUMBER = 1_000_000


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

    # -- the constructor -------------------------------------------------------------------------

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
        """Many clients' histories from flat numpy arrays: the one constructor, called by
        :meth:`features.episodes.Episodes.pack` after the contract checks.

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
            f"appointment {int(order[dup[0] + 1])}: duplicate {SESSION_NUMBER!r} for its client"
        )
    return seg_order, lengths, order
