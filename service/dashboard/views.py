"""What the dashboard's pages show: view models built from the store's rows and the model.

The routes read the store (:mod:`service.dashboard.source`) into the plain records here
(:class:`CaseloadPage`, :class:`ClientRecord`), and these functions turn them into what a
template prints: formatted numbers, band labels with their shape, charts as inline SVG. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

import pandas as pd
from markupsafe import Markup

from features.profiles import InstrumentProfile
from models.results import RAISES
from service.dashboard import charts
from service.dashboard.ruptures import rupture_sessions

#: Risk band -> (label, shape): the band is read from its word and its shape, never colour alone.
BANDS: dict[str, tuple[str, str]] = {
    "high": ("High", "triangle"),
    "moderate": ("Moderate", "diamond"),
    "low": ("Low", "circle"),
}
#: Columns the caseload can be sorted by (query parameter ``sort``, one of the store's
#: :data:`~service.store.caseload.SORT_KEYS`: the query sorts the whole caseload), with their
#: headings.
SORTS: dict[str, str] = {
    "probability": "Risk",
    "change": "Change in 7 days",
    "therapist": "Therapist",
    "last_session": "Last session",
    "client": "Client",
}


# -- records read from the store --------------------------------------------------------------


@dataclass(frozen=True)
class CaseloadRow:
    """One open episode of the caseload, as the caseload query returns it."""

    client_id: str
    therapist_id: str
    band: str | None  # None (and probability None): not scored yet
    probability: float | None
    change_7d: float | None  # now minus a week ago, same model version; None: no such score
    top_driver: str | None
    last_session: date | None
    model_version: str | None
    history: tuple[float, ...] = ()  # stored probabilities, oldest first (the sparkline)


@dataclass(frozen=True)
class CaseloadPage:
    rows: tuple[CaseloadRow, ...]
    next_cursor: str | None
    therapists: tuple[str, ...] = ()  # every therapist of the clinic's open episodes (filter)


@dataclass(frozen=True)
class Appointment:
    session_number: int
    session_date: date
    attendance: str
    ratings: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class DriverRecord:
    label: str
    text: str
    direction: str  # models.results.Direction: "raises risk" or "lowers risk"
    focus: str | None = None

    @property
    def raises(self) -> bool:
        return self.direction == RAISES


@dataclass(frozen=True)
class ClientRecord:
    """One client's episode, appointments and latest stored score with its explanation."""

    client_id: str
    therapist_id: str
    intake_date: date
    appointments: tuple[Appointment, ...]
    probability: float | None
    band: str | None
    model_version: str | None
    scored_at: datetime | None
    landmark: int | None
    drivers: tuple[DriverRecord, ...] = ()
    history: tuple[float, ...] = ()


# -- what the templates print ------------------------------------------------------------------


def percent(p: float | None) -> str:
    return "–" if p is None or not math.isfinite(p) else f"{100 * p:.0f}%"


def change_text(change: float | None) -> str:
    """A week's change in percentage points, with a word for the direction."""
    if change is None or not math.isfinite(change):
        return "no score by this model a week ago"
    points = round(100 * change)
    if points == 0:
        return "no change"
    unit = "point" if abs(points) == 1 else "points"
    return f"up {points} {unit}" if points > 0 else f"down {-points} {unit}"


def band_label(band: str | None) -> str:
    return BANDS.get(band or "", ("Not scored", ""))[0]


def band_icon(band: str | None) -> Markup:
    """A small shape per band (decorative: the word beside it says the band)."""
    shape = BANDS.get(band or "", ("", ""))[1]
    paths = {
        "triangle": '<path d="M7,1 L13,13 L1,13 z"/>',
        "diamond": '<path d="M7,0 L14,7 L7,14 L0,7 z"/>',
        "circle": '<circle cx="7" cy="7" r="6"/>',
    }
    if shape not in paths:
        return Markup("")
    return Markup(f'<svg class="band-icon band-{band}" width="14" height="14" viewBox="0 0 14 14" '
                  f'aria-hidden="true" focusable="false">{paths[shape]}</svg>')  # fmt: skip


@dataclass(frozen=True)
class RowView:
    row: CaseloadRow
    band_label: str
    band_icon: Markup
    probability: str
    change: str
    sparkline: Markup


def caseload_rows(page: CaseloadPage) -> list[RowView]:
    return [
        RowView(
            row=r,
            band_label=band_label(r.band),
            band_icon=band_icon(r.band),
            probability=percent(r.probability),
            change=change_text(r.change_7d),
            sparkline=charts.sparkline(
                r.history, label=_trend_label(r.model_version), ident=f"trend-{i}"
            ),
        )
        for i, r in enumerate(page.rows)
    ]


def _trend_label(version: str | None) -> str:
    return "Risk over the stored scores" + (f" of model version {version}" if version else "")


@dataclass(frozen=True)
class ClientView:
    record: ClientRecord
    band_label: str
    band_icon: Markup
    probability: str
    trajectory: Markup
    attendance: Markup
    legend: list[tuple[Markup, str, str]]
    ruptures: list[tuple[str, list[int]]]  # element label, sessions
    history: Markup


def client_view(record: ClientRecord, profile: InstrumentProfile) -> ClientView:
    """The client page: trajectory by element with the features' ruptures, attendance, drivers."""
    marks = rupture_sessions(_sessions_frame(record, profile), pd.Timestamp(record.intake_date),
                             profile)  # fmt: skip
    series = []
    for element in profile.elements:
        points = tuple(
            (a.session_number, float(v))
            for a in record.appointments
            if (v := a.ratings.get(element.name)) is not None and math.isfinite(v)
        )
        series.append(charts.Series(element.label, points, marks[element.name]))
    last = max((a.session_number for a in record.appointments), default=None)
    return ClientView(
        record=record,
        band_label=band_label(record.band),
        band_icon=band_icon(record.band),
        probability=percent(record.probability),
        trajectory=charts.trajectory(
            series,
            scale=(profile.scale_min, profile.scale_max),
            cutoff=profile.element_cutoff,
            last_session=last,
            ident="trajectory",
        ),  # fmt: skip
        attendance=charts.attendance_strip(
            [(a.session_number, a.attendance) for a in record.appointments], ident="attendance"
        ),
        legend=charts.legend(),
        ruptures=[(profile.element(name).label, sorted(s)) for name, s in marks.items() if s],
        history=charts.sparkline(
            record.history, label=_trend_label(record.model_version), ident="history"
        ),
    )


def _sessions_frame(record: ClientRecord, profile: InstrumentProfile) -> pd.DataFrame:
    """The client's appointments in the data contract's columns (what the features read)."""
    rows = [
        {
            "client_id": record.client_id,
            "session_number": a.session_number,
            "session_date": pd.Timestamp(a.session_date),
            "attendance": a.attendance,
            **{
                column: (a.ratings.get(e.name) if a.ratings.get(e.name) is not None else math.nan)
                for e, column in zip(profile.elements, profile.columns, strict=True)
            },
        }
        for a in record.appointments
    ]
    columns = ["client_id", "session_number", "session_date", "attendance", *profile.columns]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({c: "float64" for c in profile.columns})
