"""Raw episodes as one flat table, the input of the logged MLflow model, and results as rows.

The *episode frame* is the ``sessions`` file joined with the client's fields: one row per
scheduled appointment, the client's fields (clinic, therapist, intake date, age) repeated on
each of the client's rows, grouped by ``client_id``. It carries what ``alliance-risk score``
reads from files and what ``POST /v1/risk`` reads from JSON, in the flat shape that
``mlflow models serve`` accepts (``dataframe_split``, ``dataframe_records`` or CSV) and that an
analyst exports from a spreadsheet. MLflow 3 also has nested ``Array``/``Object`` column types,
but a nested episode (a client with a list of appointments) cannot be sent as CSV, is awkward
to build in pandas, and its schema errors name a nested path MLflow words itself; the long
table keeps every cell addressable by row and column, as our file validation reports it.

The frame is split into the contract's two tables and checked by the file edge's validation
(:func:`features.validation.validate_and_normalise`), so the wording of every problem is the
data contract's, with the row of the frame it concerns and never a submitted value. The
episodes are then built by :meth:`features.episodes.Episodes.from_frames` and scored by the one
:class:`~models.scorer.Scorer`.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pandas as pd

from features import contract as c
from features.episodes import Episodes
from features.profiles import InstrumentProfile
from features.validation import validate_and_normalise
from models.results import RiskScore

#: Client fields, the same on every row of a client (age may be empty).
CLIENT_FIELDS: Final = (c.CLIENT_ID, c.CLINIC_ID, c.THERAPIST_ID, c.INTAKE_DATE, c.AGE)
#: Appointment fields, one appointment per row (ratings follow, per instrument profile).
APPOINTMENT_FIELDS: Final = (c.SESSION_NUMBER, c.SESSION_DATE, c.ATTENDANCE)
#: Columns that may be absent or empty: age, and the ratings (an appointment without ratings).
OPTIONAL_FIELDS: Final = (c.AGE,)
#: Drivers (and groups) per result row.
TOP: Final = 3
#: Problems named in one error message; the count of the rest follows.
SHOWN_PROBLEMS: Final = 10


class EpisodeFrameError(ValueError):
    """The episode frame breaks the data contract; the message names rows and columns only."""


def frame_columns(profile: InstrumentProfile) -> tuple[str, ...]:
    """Columns of the episode frame on ``profile``, in order: client fields, appointment
    fields, then ``alliance_<element>`` ratings."""
    return (*CLIENT_FIELDS, *APPOINTMENT_FIELDS, *profile.columns)


def input_schema(profile: InstrumentProfile) -> Any:
    """The MLflow input schema (``mlflow.types.Schema``) of the episode frame on ``profile``.

    Ids and the attendance code are text. Dates, ``session_number``, ``age`` and the ratings
    are of MLflow's type ``Any``: dates as ISO text (``YYYY-MM-DD``, as in the contract's files
    and in JSON) or, in process, datetime64 columns; numbers as integers or decimals, empty as
    null. MLflow would otherwise refuse integer ratings for a double column, datetime64 for a
    string column, or, serving, cast a session number of 2.5 to 2. Every column is optional
    *to MLflow*: MLflow's own schema errors quote the whole input (client data) in their
    message, so presence and types are checked by :func:`episodes_from_frame`, whose errors
    name rows and columns only.
    """
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import AnyType

    text = (c.CLIENT_ID, c.CLINIC_ID, c.THERAPIST_ID, c.ATTENDANCE)
    return Schema(
        [
            ColSpec(DataType.string if name in text else AnyType(), name, required=False)
            for name in frame_columns(profile)
        ]
    )


def example_frame(profile: InstrumentProfile) -> pd.DataFrame:
    """A made-up episode (no real client): four weekly appointments, falling ratings, one
    no-show. The logged model's input example."""
    level = profile.scale_min + profile.scale_range * np.array([0.85, 0.8, np.nan, 0.65])
    rows = {
        c.CLIENT_ID: ["example-client"] * 4,
        c.CLINIC_ID: ["example-clinic"] * 4,
        c.THERAPIST_ID: ["example-therapist"] * 4,
        c.INTAKE_DATE: ["2026-01-02"] * 4,
        c.AGE: [34.0] * 4,
        c.SESSION_NUMBER: [1, 2, 3, 4],
        c.SESSION_DATE: ["2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"],
        c.ATTENDANCE: ["attended", "attended", "no_show", "attended"],
    }
    rows |= {col: level for col in profile.columns}
    return pd.DataFrame(rows)


def _describe(problems: list[tuple[int | None, str | None, str]]) -> str:
    shown = [
        f"{'frame' if row is None else f'row {row}'}"
        f"{'' if column is None else f', {column}'}: {reason}"
        for row, column, reason in problems[:SHOWN_PROBLEMS]
    ]
    more = len(problems) - len(shown)
    tail = f"; and {more} more problem(s)" if more > 0 else ""
    return "the episode frame breaks the data contract (rows counted from 0): " + (
        "; ".join(shown) + tail
    )


def episodes_from_frame(frame: pd.DataFrame, profile: InstrumentProfile) -> Episodes:
    """Check an episode frame and build its episodes (one per distinct ``client_id``, in
    order of first appearance).

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per appointment: :func:`frame_columns` (``age`` and ratings optional), text or
        typed; other columns are ignored. Row order does not matter.
    profile : InstrumentProfile
        The model's instrument profile: its ``alliance_<element>`` columns are read.

    Raises
    ------
    EpisodeFrameError
        A missing column, a client whose fields differ between its rows, or any rule of the data
        contract; the message names each row (0-based position in ``frame``) and column, never a
        value.
    """
    missing = [col for col in (*CLIENT_FIELDS, *APPOINTMENT_FIELDS) if col not in frame.columns]
    missing = [col for col in missing if col not in OPTIONAL_FIELDS]
    if missing:
        raise EpisodeFrameError(_describe([(None, col, "missing column") for col in missing]))
    rows = frame.reset_index(drop=True)
    present = [col for col in CLIENT_FIELDS if col in rows.columns]
    client_ids = rows[c.CLIENT_ID].astype("str").str.strip()
    first = ~client_ids.duplicated()
    first_row = np.flatnonzero(first.to_numpy())
    # Client fields repeat on every row of a client: compare each row with the client's first.
    firsts = rows.loc[first, present].set_axis(client_ids[first], axis=0)
    again = firsts.reindex(client_ids).set_axis(rows.index, axis=0)
    differs = [
        (row, col)
        for col in present[1:]
        for row in np.flatnonzero(
            ~(
                (rows[col].astype("str") == again[col].astype("str"))
                | (rows[col].isna() & again[col].isna())
            ).to_numpy()
        ).tolist()
    ]
    clients = rows.loc[first, present].assign(**{c.OUTCOME: c.ONGOING})
    sessions = rows[
        [c.CLIENT_ID, c.CLINIC_ID, c.THERAPIST_ID, *APPOINTMENT_FIELDS]
        + [col for col in profile.columns if col in rows.columns]
    ]
    checked = validate_and_normalise(sessions, clients, profile)
    problems: list[tuple[int | None, str | None, str]] = [
        (
            None if p.row is None else p.row if p.table == "sessions" else int(first_row[p.row]),
            p.column,
            p.reason,
        )
        for p in checked.report.errors
    ]
    # The contract's own join rules already word some of these (a clinic that differs).
    reported = {(row, col) for row, col, _ in problems}
    problems += [
        (row, col, "differs from the first row of the same client_id")
        for row, col in differs
        if (row, col) not in reported
    ]
    if problems:
        problems.sort(key=lambda p: (-1 if p[0] is None else p[0], p[1] or ""))
        raise EpisodeFrameError(_describe(problems))
    return Episodes.from_frames(checked.sessions, checked.clients, profile)


def score_row(score: RiskScore) -> dict[str, Any]:
    """One flat table row of a result: the client, the risk, and its top drivers.

    Columns: ``client_id``, ``clinic_id``, ``therapist_id``, ``landmark``, ``probability``,
    ``risk_band``, ``scored_at``, ``base_probability``, ``space``, then for ``i = 1..3``
    ``group_i``, ``contribution_i`` (signed, in ``space``), ``driver_i`` (the sentence) and
    ``focus_i`` (the alliance-building focus, empty for attendance and engagement).
    """
    doc = score.to_dict()
    explanation = doc.pop("explanation")
    row = {**doc}
    row["base_probability"] = explanation["base_probability"]
    row["space"] = explanation["space"]
    drivers = explanation["drivers"]
    for i in range(TOP):
        d = drivers[i] if i < len(drivers) else {}
        row[f"group_{i + 1}"] = d.get("group")
        row[f"contribution_{i + 1}"] = d.get("contribution")
        row[f"driver_{i + 1}"] = d.get("text")
        row[f"focus_{i + 1}"] = d.get("focus")
    return row


#: Columns of :func:`score_row`, in order.
RESULT_COLUMNS: Final = (
    "client_id", "clinic_id", "therapist_id", "landmark", "probability", "risk_band",
    "scored_at", "base_probability", "space",
    *(f"{kind}_{i}" for i in range(1, TOP + 1)
      for kind in ("group", "contribution", "driver", "focus")),
)  # fmt: skip
