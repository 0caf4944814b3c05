"""The API's edge to the scorer: validated requests in, :class:`~features.episodes.Episodes`
out, and the scorer's contract problems back as paths into the request.

Only what the request schema cannot know is checked here: rating keys against the served model's
instrument profile, and the per-client appointment limit. Every rule of the data contract runs
in the scorer (:func:`features.validation.contract_violations`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from features import contract
from features.episodes import Episodes
from features.profiles import ALLIANCE_PREFIX, InstrumentProfile
from features.validation import alliance_not_in_profile
from models.results import ContractProblem
from service.errors import safe_loc
from service.schemas import RiskRequest

#: ``date.toordinal()`` of 1970-01-01: ordinals minus this are days since the epoch.
_EPOCH_ORDINAL = 719163
_CODE = {code: i for i, code in enumerate(contract.ATTENDANCE_CODES)}

Loc = list[str | int]
RequestProblem = dict[str, Any]


def too_many_sessions(max_sessions: int) -> str:
    return f"at most {max_sessions} appointments per client in one request"


def edge_problems(
    request: RiskRequest, profile: InstrumentProfile, *, max_sessions: int
) -> list[RequestProblem]:
    """What only the edge can refuse: more than ``max_sessions`` appointments, or a rating of
    an element the served model's profile does not have."""
    if len(request.sessions) > max_sessions:
        return [{"loc": ["sessions"], "reason": too_many_sessions(max_sessions)}]
    elements = profile.element_names
    keys = set().union(*(s.get("ratings", {}) for s in request.sessions))
    if keys <= set(elements):
        return []
    return [
        {
            "loc": safe_loc(["sessions", i, "ratings", name]),
            "reason": alliance_not_in_profile(profile),
        }
        for i, s in enumerate(request.sessions)
        for name in s.get("ratings", {})
        if name not in elements
    ]


@dataclass(frozen=True)
class RequestEpisodes:
    """Requests as episodes: episode ``j`` is ``requests[j]``, its appointments in request
    order starting at ``start[j]``."""

    episodes: Episodes
    start: np.ndarray

    def request_problems(self, j: int, found: Sequence[ContractProblem]) -> list[RequestProblem]:
        """The scorer's problems of episode ``j`` as paths into its request."""
        return [{"loc": self._loc(j, p), "reason": p.reason} for p in found]

    def _loc(self, j: int, problem: ContractProblem) -> Loc:
        if problem.appointment is None:
            return [problem.column]
        i = problem.appointment - int(self.start[j])
        if problem.column.startswith(ALLIANCE_PREFIX):
            return ["sessions", i, "ratings", problem.column.removeprefix(ALLIANCE_PREFIX)]
        return ["sessions", i, problem.column]


def to_episodes(requests: Sequence[RiskRequest], profile: InstrumentProfile) -> RequestEpisodes:
    """The requests (checked by :func:`edge_problems`) as episodes on ``profile``."""
    sessions = [s for r in requests for s in r.sessions]
    lengths = [len(r.sessions) for r in requests]
    start = np.zeros(len(requests), dtype=np.int64)
    np.cumsum(lengths[:-1], out=start[1:])
    rated = [s.get("ratings", {}) for s in sessions]
    episodes = Episodes.from_columns(
        profile,
        client_id=[r.client_id for r in requests],
        clinic_id=[r.clinic_id for r in requests],
        therapist_id=[r.therapist_id for r in requests],
        intake_day=[r.intake_date.toordinal() - _EPOCH_ORDINAL for r in requests],
        age=[np.nan if r.age is None else r.age for r in requests],
        episode=np.repeat(np.arange(len(requests)), lengths),
        session_number=[s["session_number"] for s in sessions],
        day=[s["session_date"].toordinal() - _EPOCH_ORDINAL for s in sessions],
        attendance=[_CODE[s["attendance"]] for s in sessions],
        # None (not rated) and absent elements become NaN.
        ratings=[[r.get(e) for r in rated] for e in profile.element_names],
    )
    return RequestEpisodes(episodes, start)
