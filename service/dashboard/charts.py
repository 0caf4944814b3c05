"""Inline SVG charts for the dashboard, rendered on the server: no JavaScript, no library.

Every chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` that carry the numbers
it draws, so a screen reader reads what a sighted clinician sees. Colours come from the package's
stylesheet (classes only: the Content-Security-Policy allows no inline style), and no chart relies
on colour alone: rupture marks are triangles with an "R", attendance cells carry a letter and a
shape of their own (no attendance letter is "R": a rescheduled appointment is "M", moved).

Ids inside a chart (its title and description) start with the caller's ``ident``, which must be
unique on the page (a caseload passes one per row); without one, a hash of the chart's text.

Every text that reaches the markup is escaped (:func:`markupsafe.escape`); the functions return
:class:`markupsafe.Markup` for the templates to insert as is.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

#: Attendance code -> (letter, legend text, CSS class naming the cell's shape).
ATTENDANCE = {
    "attended": ("A", "attended", "att-attended"),
    "no_show": ("N", "no-show", "att-no-show"),
    "late_cancel": ("L", "late cancellation", "att-late-cancel"),
    "cancelled": ("C", "cancelled", "att-cancelled"),
    "rescheduled": ("M", "rescheduled (moved)", "att-rescheduled"),
}


@dataclass(frozen=True)
class Series:
    """One alliance element's ratings by session, for :func:`trajectory`.

    ``points`` holds ``(session_number, rating)`` of rated sessions only; ``ruptures`` the session
    numbers where the features' rupture rule fired (:mod:`service.dashboard.ruptures`).
    """

    label: str
    points: tuple[tuple[int, float], ...]
    ruptures: frozenset[int] = frozenset()


def _num(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def _svg(width: int, height: int, title: str, desc: str, body: str, css: str,
         ident: str | None = None) -> Markup:  # fmt: skip
    """An accessible SVG element; ``title`` and ``desc`` are plain text (escaped here)."""
    ident = escape(ident) if ident else f"c{zlib.crc32((title + desc).encode()):08x}"
    return Markup(
        f'<svg class="{css}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-labelledby="{ident}-t {ident}-d" preserveAspectRatio="xMinYMin meet">'
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(desc)}</desc>'
        f"{body}</svg>"
    )


def sparkline(
    values: Sequence[float], *, label: str = "Risk trend", ident: str | None = None
) -> Markup:
    """A small line of a client's risk history (probabilities in [0, 1], oldest first).

    The last point is a dot; the description lists every value as a percentage. With fewer than
    two values it draws a single dot (or a dash for none) and says so.
    """
    width, height, pad = 96, 24, 3
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return _svg(width, height, label, "no scores yet",
                    f'<line class="spark-empty" x1="{pad}" y1="12" x2="{width - pad}" y2="12"/>',
                    "sparkline", ident)  # fmt: skip
    low, high = min(finite), max(finite)
    span = max(high - low, 0.05)  # a flat history stays a flat line, not noise blown up
    mid = (low + high) / 2
    low, high = mid - span / 2, mid + span / 2

    def y(v: float) -> float:
        return pad + (height - 2 * pad) * (1 - (v - low) / (high - low))

    n = len(finite)
    step = (width - 2 * pad) / max(n - 1, 1)
    xs = [pad + i * step for i in range(n)] if n > 1 else [width - pad]
    points = " ".join(f"{x:.1f},{y(v):.1f}" for x, v in zip(xs, finite, strict=True))
    body = ""
    if n > 1:
        body += f'<polyline class="spark-line" points="{points}"/>'
    body += f'<circle class="spark-dot" cx="{xs[-1]:.1f}" cy="{y(finite[-1]):.1f}" r="2.5"/>'
    pct = ", ".join(f"{100 * v:.0f}%" for v in finite)
    desc = f"{n} scores, oldest first: {pct}" if n > 1 else f"one score so far: {pct}"
    return _svg(width, height, label, desc, body, "sparkline", ident)


def trajectory(
    series: Sequence[Series],
    *,
    scale: tuple[float, float],
    cutoff: float | None = None,
    last_session: int | None = None,
    ident: str | None = None,
) -> Markup:
    """Small multiples of the alliance by element: one panel per element, ratings by session.

    Parameters
    ----------
    series
        One :class:`Series` per element, in the instrument's order.
    scale
        The instrument's rating range ``(min, max)``: every panel shares it, so panels compare.
    cutoff
        The element cut-off (ratings below it are a concern), drawn as a dashed line.
    last_session
        The x axis runs from session 1 to this (default: the last rated session).
    ident
        The id prefix of the chart's title and description (unique on the page).
    """
    cols = 2 if len(series) > 1 else 1
    rows = math.ceil(len(series) / cols)
    pw, ph = 300, 150  # one panel
    left, right, top, bottom = 34, 10, 24, 30
    width, height = cols * pw, rows * ph
    lo, hi = scale
    sessions = [s for one in series for s, _ in one.points]
    x_max = max([last_session or 0, *sessions, 2])
    body: list[str] = []
    descs: list[str] = []

    for i, one in enumerate(series):
        ox, oy = (i % cols) * pw, (i // cols) * ph
        x0, x1 = ox + left, ox + pw - right
        y0, y1 = oy + top, oy + ph - bottom

        def X(s: float, x0: float = x0, x1: float = x1) -> float:
            return x0 + (x1 - x0) * (s - 1) / (x_max - 1)

        def Y(v: float, y0: float = y0, y1: float = y1) -> float:
            return y1 - (y1 - y0) * (v - lo) / (hi - lo)

        body.append(f'<g class="panel"><text class="panel-title" x="{x0}" y="{oy + 15}">'
                    f"{escape(one.label)}</text>")  # fmt: skip
        body.append(f'<rect class="plot" x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}"/>')
        for v in (lo, (lo + hi) / 2, hi):
            body.append(f'<text class="tick" x="{x0 - 4}" y="{Y(v) + 4:.1f}" '
                        f'text-anchor="end">{_num(v, 0)}</text>')  # fmt: skip
        for s in sorted({1, (x_max + 1) // 2, x_max}):
            body.append(f'<text class="tick" x="{X(s):.1f}" y="{y1 + 13}" '
                        f'text-anchor="middle">{s}</text>')  # fmt: skip
        if cutoff is not None and lo < cutoff < hi:
            body.append(f'<line class="cutoff" x1="{x0}" x2="{x1}" y1="{Y(cutoff):.1f}" '
                        f'y2="{Y(cutoff):.1f}"/>')  # fmt: skip
        if len(one.points) > 1:
            pts = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in one.points)
            body.append(f'<polyline class="traj-line" points="{pts}"/>')
        for s, v in one.points:
            body.append(f'<circle class="traj-dot" cx="{X(s):.1f}" cy="{Y(v):.1f}" r="2.5"/>')
        for s, v in one.points:
            if s in one.ruptures:
                cx, cy = X(s), Y(v) + 5
                body.append(
                    f'<path class="rupture" d="M{cx - 7:.1f},{cy:.1f} h14 l-7,13 z"/>'
                    f'<text class="rupture-label" x="{cx:.1f}" y="{cy + 8.5:.1f}" '
                    f'text-anchor="middle">R</text>'
                )
        body.append("</g>")
        values = "; ".join(f"session {s}: {_num(v)}" for s, v in one.points) or "not rated"
        marks = ", ".join(str(s) for s in sorted(one.ruptures))
        rupt = f"; ruptures at session {marks}" if marks else "; no ruptures"
        descs.append(f"{one.label}: {values}{rupt}.")

    body.append(f'<text class="axis-label" x="{width / 2:.0f}" y="{height - 4}" '
                f'text-anchor="middle">session number</text>')  # fmt: skip
    scale_text = f"ratings {_num(lo, 0)} to {_num(hi, 0)}"
    cut_text = f", cut-off {_num(cutoff)} dashed" if cutoff is not None else ""
    title = f"Alliance by element and session ({scale_text}{cut_text}; R marks a rupture)"
    return _svg(width, height, title, " ".join(descs), "".join(body), "trajectory", ident)


def attendance_strip(
    appointments: Sequence[tuple[int, str]], *, ident: str | None = None
) -> Markup:
    """One cell per appointment, in order: a letter in a shape per attendance code.

    ``appointments`` holds ``(session_number, attendance code)``. Unknown codes show "?".
    """
    cell, gap, pad = 26, 4, 2
    per_row = 24
    n = len(appointments)
    rows = max(math.ceil(n / per_row), 1)
    width = pad * 2 + min(max(n, 1), per_row) * (cell + gap)
    height = pad * 2 + rows * (cell + gap + 11)
    body: list[str] = []
    for i, (session, code) in enumerate(appointments):
        x = pad + (i % per_row) * (cell + gap)
        y = pad + (i // per_row) * (cell + gap + 11)
        body.append(_cell(code, x, y, cell))
        body.append(f'<text class="att-n" x="{x + cell / 2}" y="{y + cell + 10}" '
                    f'text-anchor="middle">{session}</text>')  # fmt: skip
    counts: dict[str, int] = {}
    for _, code in appointments:
        counts[code] = counts.get(code, 0) + 1
    summary = ", ".join(
        f"{counts[c]} {ATTENDANCE.get(c, ('?', c, ''))[1]}" for c in ATTENDANCE if c in counts
    )
    sequence = "; ".join(
        f"session {s} {ATTENDANCE.get(c, ('?', c, ''))[1]}" for s, c in appointments
    )
    title = f"Attendance, {n} appointments: {summary or 'none'}"
    return _svg(width, height, title, sequence or "no appointments", "".join(body), "attendance",
                ident)  # fmt: skip


def _cell(code: str, x: float, y: float, cell: int) -> str:
    """One attendance cell: a shape per code (circle, square, triangle, diamond) and a letter."""
    letter, _, css = ATTENDANCE.get(code, ("?", code, "att-unknown"))
    cx, cy, r = x + cell / 2, y + cell / 2, cell / 2 - 1
    if code == "attended":
        shape = f'<circle cx="{cx}" cy="{cy}" r="{r}"/>'
    elif code == "no_show":
        shape = f'<rect x="{x + 1}" y="{y + 1}" width="{cell - 2}" height="{cell - 2}"/>'
    elif code == "late_cancel":
        shape = (
            f'<path d="M{cx},{y + 1} L{x + cell - 1},{y + cell - 1} L{x + 1},{y + cell - 1} z"/>'
        )
    else:
        shape = (
            f'<path d="M{cx},{y + 1} L{x + cell - 1},{cy} L{cx},{y + cell - 1} L{x + 1},{cy} z"/>'
        )
    return (f'<g class="att {css}">{shape}<text x="{cx}" y="{cy + 4.5}" '
            f'text-anchor="middle">{letter}</text></g>')  # fmt: skip


def legend() -> list[tuple[Markup, str, str]]:
    """``(cell svg, letter, meaning)`` per attendance code, for the legend under the strip (the
    svg is decorative there: the letter and the words carry the meaning)."""
    out = []
    for code, (letter, text, _) in ATTENDANCE.items():
        svg = Markup(f'<svg class="attendance" width="22" height="22" viewBox="0 0 22 22" '
                     f'aria-hidden="true" focusable="false">{_cell(code, 0, 0, 22)}</svg>')  # fmt: skip
        out.append((svg, letter, text))
    return out
