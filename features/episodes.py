"""Episodes of care as numpy columns: what every edge hands the scorer.

An *episode* is one client's course of treatment: the client's fields and its scheduled
appointments. Every edge builds episodes in this one form: the file loader from the ``sessions``
and ``clients`` tables (:meth:`Episodes.from_frames`), the HTTP API from one request or a batch
of them (:meth:`Episodes.from_columns`). The data contract's rules within an episode are checked
over these columns, once and vectorised, by :func:`features.validation.contract_violations`, so a
single request and a file of a million rows are checked by the same code with the same wording.

What a reader could not parse arrives here as missing (NaN, -1, None): the rules report it.
Rules that join the two tables (an unknown or duplicated client, a clinic that differs) belong
to :mod:`features.validation` alone, since only files have two tables.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from features import contract as c
from features.arrays import SessionArrays
from features.profiles import InstrumentProfile


@dataclass(frozen=True, eq=False)
class Episodes:
    """Episodes of care in contract types: one entry per episode and one per appointment.

    Values that could not be read are missing (NaN, -1 or None); :func:`contract_violations`
    reports them. Build with :meth:`from_frames` or :meth:`from_columns`.

    Attributes
    ----------
    profile
        Instrument profile of the ``ratings`` rows.
    client_id, clinic_id, therapist_id
        ``(n_episodes,)`` object arrays of str (None when unknown).
    intake_day
        ``(n_episodes,)`` float64: intake date in days since 1970-01-01, NaN when unknown.
    age
        ``(n_episodes,)`` float64: age in years, NaN when unknown.
    outcome
        ``(n_episodes,)`` int8: index into :data:`~features.contract.OUTCOME_CODES`, -1 when
        unknown.
    episode
        ``(n_appointments,)`` int64: the episode of each appointment, -1 for a row that belongs
        to none (a file row without a usable client_id).
    session_number
        ``(n_appointments,)`` float64: whole numbers 1 to ``SESSION_NUMBER_MAX``, NaN when
        missing or invalid.
    day
        ``(n_appointments,)`` float64: appointment date in days since 1970-01-01, NaN when
        missing or invalid.
    attendance
        ``(n_appointments,)`` int8: index into :data:`~features.contract.ATTENDANCE_CODES`, -1
        when missing or unknown.
    ratings
        ``(n_elements, n_appointments)`` float64 in ``profile.columns`` order, NaN when not
        rated.
    """

    profile: InstrumentProfile
    client_id: np.ndarray
    clinic_id: np.ndarray
    therapist_id: np.ndarray
    intake_day: np.ndarray
    age: np.ndarray
    outcome: np.ndarray
    episode: np.ndarray
    session_number: np.ndarray
    day: np.ndarray
    attendance: np.ndarray
    ratings: np.ndarray

    def __post_init__(self) -> None:
        n, m = self.client_id.shape[0], self.episode.shape[0]
        per_episode = (self.clinic_id, self.therapist_id, self.intake_day, self.age, self.outcome)
        per_appointment = (self.session_number, self.day, self.attendance)
        if any(a.shape != (n,) for a in per_episode) or any(
            a.shape != (m,) for a in per_appointment
        ):
            raise ValueError("episode and appointment columns differ in length")
        if self.ratings.shape != (len(self.profile.elements), m):
            raise ValueError(
                "ratings must have one row per profile element and a column per appointment"
            )
        if m and (self.episode.min() < -1 or self.episode.max() >= n):
            raise ValueError("episode must index the episodes (or be -1)")

    @property
    def n_episodes(self) -> int:
        return int(self.client_id.shape[0])

    @property
    def n_appointments(self) -> int:
        return int(self.episode.shape[0])

    @classmethod
    def from_columns(
        cls,
        profile: InstrumentProfile,
        *,
        client_id: Any,
        clinic_id: Any,
        therapist_id: Any,
        intake_day: Any,
        age: Any,
        episode: Any,
        session_number: Any,
        day: Any,
        attendance: Any,
        ratings: Any,
        outcome: Any = None,
    ) -> Episodes:
        """Episodes from sequences or arrays in the types of the attributes (copied, converted).

        ``outcome`` defaults to unknown for every episode.
        """
        n = len(client_id)
        return cls(
            profile=profile,
            client_id=np.array(client_id, dtype=object),
            clinic_id=np.array(clinic_id, dtype=object),
            therapist_id=np.array(therapist_id, dtype=object),
            intake_day=np.array(intake_day, dtype=np.float64),
            age=np.array(age, dtype=np.float64),
            outcome=np.full(n, -1, np.int8) if outcome is None else np.array(outcome, np.int8),
            episode=np.array(episode, dtype=np.int64),
            session_number=np.array(session_number, dtype=np.float64),
            day=np.array(day, dtype=np.float64),
            attendance=np.array(attendance, dtype=np.int8),
            ratings=np.array(ratings, dtype=np.float64).reshape(len(profile.elements), -1),
        )

    @classmethod
    def from_frames(
        cls, sessions: pd.DataFrame, clients: pd.DataFrame, profile: InstrumentProfile
    ) -> Episodes:
        """Episodes from normalised tables (:func:`features.validation.normalise_sessions` and
        :func:`~features.validation.normalise_clients`), problems included.

        One episode per distinct ``client_id``: those of ``clients`` in table order, then ids
        found only in ``sessions``. Appointments keep the row order of ``sessions`` (appointment
        ``i`` is row ``i``) and link to their episode by ``client_id``; a row with no client_id
        links to none (-1). The client fields come from the clients row when there is exactly
        one for the id, else they are unknown (:mod:`features.validation` reports the unknown
        or duplicated client).

        Typed tables that were not normalised (the simulator's, a test's) are read as well:
        a session_number that is not a whole number from 1 to ``SESSION_NUMBER_MAX`` is
        missing, dates may be ISO text.

        Parameters
        ----------
        sessions
            ``client_id``, ``session_number``, ``session_date`` (datetime64), ``attendance``
            and the profile's rating columns.
        clients
            ``client_id``; ``clinic_id``, ``therapist_id``, ``intake_date`` (datetime64),
            ``age`` and ``outcome`` when present.

        Raises
        ------
        ValueError
            On a missing column, a rating column that is not numeric or a date column that is
            not dates. Messages name the column, never a value.
        """
        for col in (c.CLIENT_ID, c.SESSION_NUMBER, c.SESSION_DATE, c.ATTENDANCE, *profile.columns):
            if col not in sessions.columns:
                raise ValueError(f"sessions: missing column {col!r}")
        if c.CLIENT_ID not in clients.columns:
            raise ValueError(f"clients: missing column {c.CLIENT_ID!r}")
        n_clients = len(clients)
        codes, uniques = pd.factorize(
            pd.concat([clients[c.CLIENT_ID], sessions[c.CLIENT_ID]], ignore_index=True)
        )
        codes = codes.astype(np.int64)
        client_code, session_code = codes[:n_clients], codes[n_clients:]
        n = len(uniques)
        linked = client_code >= 0
        rows_per_id = np.bincount(client_code[linked], minlength=n)
        unique = linked.copy()
        unique[linked] = rows_per_id[client_code[linked]] == 1
        row_of = np.full(n, -1, dtype=np.int64)
        row_of[client_code[unique]] = np.flatnonzero(unique)
        known = row_of >= 0
        at = np.maximum(row_of, 0)

        def per_episode(column: str, values: np.ndarray, missing: Any) -> np.ndarray:
            out = np.full(n, missing, dtype=values.dtype)
            if n_clients and column in clients.columns:
                out[known] = values[at[known]]
            return out

        def text(column: str) -> np.ndarray:
            if column not in clients.columns:
                return np.full(n, None, dtype=object)
            values = clients[column].to_numpy(dtype=object, copy=True)
            values[pd.isna(values)] = None
            return per_episode(column, values, None)

        outcome = (
            pd.Index(c.OUTCOME_CODES).get_indexer(pd.Index(clients[c.OUTCOME])).astype(np.int8)
            if c.OUTCOME in clients.columns
            else np.full(n_clients, -1, np.int8)
        )
        ratings = np.empty((len(profile.columns), len(sessions)))
        for i, col in enumerate(profile.columns):
            try:
                ratings[i] = sessions[col].to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                raise ValueError(f"sessions: column {col!r} must be numeric") from None
        return cls(
            profile=profile,
            client_id=np.asarray(uniques, dtype=object),
            clinic_id=text(c.CLINIC_ID),
            therapist_id=text(c.THERAPIST_ID),
            intake_day=per_episode(c.INTAKE_DATE, _days(clients, c.INTAKE_DATE), np.nan),
            age=per_episode(
                c.AGE,
                clients[c.AGE].to_numpy(dtype=np.float64, na_value=np.nan)
                if c.AGE in clients.columns
                else np.full(n_clients, np.nan),
                np.nan,
            ),
            outcome=per_episode(c.OUTCOME, outcome, -1),
            episode=session_code,
            session_number=_session_numbers(sessions[c.SESSION_NUMBER]),
            day=_days(sessions, c.SESSION_DATE),
            attendance=pd.Index(c.ATTENDANCE_CODES)
            .get_indexer(pd.Index(sessions[c.ATTENDANCE]))
            .astype(np.int8),
            ratings=ratings,
        )

    def episode_starts(self) -> np.ndarray:
        """``(n_episodes,)`` int64: position of each episode's first appointment, for episodes
        whose appointments are contiguous (as :meth:`from_columns` callers build them); -1 for
        an episode without appointments."""
        first = np.full(self.n_episodes, -1, dtype=np.int64)
        linked = np.flatnonzero(self.episode >= 0)
        first[self.episode[linked][::-1]] = linked[::-1]
        return first

    def pack(self, episodes: np.ndarray) -> SessionArrays:
        """The appointments of ``episodes`` (positions, each with at least one appointment and
        no contract violation) sorted and packed for the feature kernels.

        The result's clients are ``episodes[j]`` for ``j = 0, 1, ...``: segment ``s`` holds
        ``episodes[client_rank[s]]`` (segments are ordered by length, see
        :class:`~features.arrays.SessionArrays`), and output rows of
        :func:`features.build.landmark_rows` come in ``j`` order.
        """
        episodes = np.asarray(episodes, dtype=np.int64)
        new_index = np.full(self.n_episodes, -1, dtype=np.int64)
        new_index[episodes] = np.arange(episodes.shape[0])
        linked = self.episode >= 0
        keep = np.flatnonzero(linked)[new_index[self.episode[linked]] >= 0]
        arrays = SessionArrays.from_episodes(
            self.profile,
            client=new_index[self.episode[keep]],
            session_number=self.session_number[keep].astype(np.int64),
            day=self.day[keep].astype(np.int64),
            attendance=self.attendance[keep],
            ratings=self.ratings[:, keep],
            intake_day=self.intake_day[episodes],
            age=self.age[episodes],
        )
        return replace(arrays, outcome=self.outcome[episodes][arrays.client_rank])


def _session_numbers(values: pd.Series) -> np.ndarray:
    """Session numbers as float64, NaN where missing or not a whole number in the contract's
    range."""
    number = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        valid = (number == np.floor(number)) & (number >= 1) & (number <= c.SESSION_NUMBER_MAX)
    return np.where(valid, number, np.nan)


def _days(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A datetime64 (or ISO text) column as float64 days since 1970-01-01, NaN for NaT."""
    try:
        values = frame[column].to_numpy(dtype="datetime64[us]")
    except (TypeError, ValueError):
        # numpy's message quotes the cell.
        raise ValueError(f"column {column!r} must hold dates (datetime64 or ISO text)") from None
    day = values.astype("datetime64[D]")
    out = day.astype(np.int64).astype(np.float64)
    out[np.isnat(day)] = np.nan
    return out
