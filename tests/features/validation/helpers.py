"""A valid raw cohort and the mutations that break one rule each, shared by the validation
tests."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from features import contract as c
from features import validation as v
from features.profiles import ALLIANCE6, InstrumentProfile

Frames = tuple[pd.DataFrame, pd.DataFrame]
Expected = list[tuple[str, int | None, str | None, str]]


def _mid(profile: InstrumentProfile, offset: float = 0.0) -> str:
    return f"{(profile.scale_min + profile.scale_max) / 2 + offset:g}"


def cohort(profile: InstrumentProfile = ALLIANCE6) -> Frames:
    """A valid raw (all-text, as read from CSV) pair: clients 007 (3 sessions), 012 (2)."""
    rows = [
        # client, session_number, date, attendance, rated
        ("007", "1", "2024-01-02", "attended", True),
        ("007", "2", "2024-01-09", "no_show", False),
        ("007", "3", "2024-01-16", "attended", True),
        ("012", "1", "2024-02-01", "attended", True),
        ("012", "2", "2024-02-08", "cancelled", False),
    ]
    sessions = pd.DataFrame(
        {
            c.CLIENT_ID: [r[0] for r in rows],
            c.CLINIC_ID: ["K01"] * len(rows),
            c.THERAPIST_ID: ["T01"] * len(rows),
            c.SESSION_NUMBER: [r[1] for r in rows],
            c.SESSION_DATE: [r[2] for r in rows],
            c.ATTENDANCE: [r[3] for r in rows],
            **{col: [_mid(profile) if r[4] else None for r in rows] for col in profile.columns},
        },
        dtype="str",
    )
    clients = pd.DataFrame(
        {
            c.CLIENT_ID: ["007", "012"],
            c.CLINIC_ID: ["K01", "K01"],
            c.THERAPIST_ID: ["T01", "T01"],
            c.INTAKE_DATE: ["2024-01-01", "2024-01-30"],
            c.OUTCOME: ["completed", "dropout"],
            c.AGE: ["34", None],
            c.GENDER: ["female", None],
            c.REFERRAL_SOURCE: ["gp", "self"],
        },
        dtype="str",
    )
    return sessions, clients


def found(report: v.ValidationReport) -> Expected:
    return [(p.table, p.row, p.column, p.reason) for p in report.problems]


def set_cell(table: str, row: int, column: str, value: str | None) -> Callable[[Frames], Frames]:
    def mutate(frames: Frames) -> Frames:
        s, cl = (f.copy() for f in frames)
        target = s if table == "sessions" else cl
        target.loc[row, column] = value
        return s, cl

    return mutate


def append_row(table: str, **values: str) -> Callable[[Frames], Frames]:
    def mutate(frames: Frames) -> Frames:
        s, cl = frames
        if table == "sessions":
            s = pd.concat([s, pd.DataFrame([values], dtype="str")], ignore_index=True)
        else:
            cl = pd.concat([cl, pd.DataFrame([values], dtype="str")], ignore_index=True)
        return s, cl

    return mutate


def drop_column(table: str, column: str) -> Callable[[Frames], Frames]:
    def mutate(frames: Frames) -> Frames:
        s, cl = frames
        if table == "sessions":
            return s.drop(columns=column), cl
        return s, cl.drop(columns=column)

    return mutate
