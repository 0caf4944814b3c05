"""One client's packed arrays for kernel and driver tests, built the way the code builds them:
:meth:`Episodes.from_columns <features.episodes.Episodes.from_columns>`, then
:meth:`~features.episodes.Episodes.pack`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from features.arrays import SessionArrays
from features.contract import ATTENDANCE_CODES
from features.episodes import Episodes
from features.profiles import InstrumentProfile

EPOCH = np.datetime64("1970-01-01", "D")


def days(dates: Any) -> np.ndarray:
    """Dates (datetime64, ``datetime.date``, ``pandas.Timestamp`` or ISO text) -> float64 days
    since 1970-01-01."""
    return (np.asarray(dates, dtype="datetime64[D]") - EPOCH).astype(np.float64)


def one_client(
    profile: InstrumentProfile,
    *,
    session_number: Sequence[int] | np.ndarray,
    session_date: Any,
    attendance: Sequence[str],
    ratings: Mapping[str, Sequence[float | None]] | np.ndarray,
    intake_date: Any = None,
    age: float | None = None,
) -> SessionArrays:
    """One client's arrays, appointments in any order. Not checked against the contract, so a
    test can hand the kernel what the checks refuse (ratings on a missed appointment, inf).

    ``ratings`` maps an element to its ratings per appointment (None = not rated; elements left
    out are not rated), or is an ``(n_elements, n_appointments)`` array.
    """
    n = len(session_number)
    if isinstance(ratings, Mapping):
        ratings = np.array(
            [
                [np.nan if v is None else v for v in ratings.get(e, [None] * n)]
                for e in profile.element_names
            ],
            dtype=np.float64,
        )
    episodes = Episodes.from_columns(
        profile,
        client_id=["solo"],
        clinic_id=[None],
        therapist_id=[None],
        intake_day=[np.nan] if intake_date is None else days([intake_date]),
        age=[np.nan if age is None else age],
        episode=np.zeros(n, dtype=np.int64),
        session_number=session_number,
        day=days(session_date),
        attendance=[ATTENDANCE_CODES.index(a) for a in attendance],
        ratings=ratings,
    )
    return episodes.pack(np.array([0]))
