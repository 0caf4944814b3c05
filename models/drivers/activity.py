"""Sentences of attendance, engagement and client characteristics: misses, gaps, days, age.

Each takes the pair's :class:`~models.drivers.facts.ActivityFacts`, its group and whether the
group raises the risk, and returns ``(text, evidence)`` or None.
"""

from __future__ import annotations

from collections.abc import Callable
from math import isfinite

from features.registry import YOUNG_AGE_YEARS
from models.drivers.facts import ATTENDED_CODE, RECENT_APPOINTMENTS, ActivityFacts
from models.drivers.tables import Group, fmt
from models.drivers.wording import Sentence, counted, finite, listed, whole
from models.results import Evidence

_CODE_TEXT = ("attended", "no-show", "late cancellation", "cancelled", "rescheduled")


def _misses(no_show: int, late: int) -> str:
    parts = []
    if no_show:
        parts.append(counted(no_show, "no-show"))
    if late:
        parts.append(counted(late, "late cancellation"))
    return listed(parts)


def _recent_missed(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    k, ns, lc = f.k, f.w_no_show, f.w_late
    tot_ns = whole(f.attendance_no_show_count)
    tot_lc = whole(f.attendance_late_cancel_count)
    window = (
        f"in the last {RECENT_APPOINTMENTS} appointments"
        if k >= RECENT_APPOINTMENTS
        else f"in {counted(k, 'appointment')} so far"
    )
    ev: Evidence = {
        "fact": "recent_missed",
        "no_shows": ns,
        "late_cancellations": lc,
        "appointments": min(k, RECENT_APPOINTMENTS),
        "no_shows_total": tot_ns,
        "late_cancellations_total": tot_lc,
        "appointments_total": k,
    }
    if up:
        if ns + lc > 0:
            return f"{_misses(ns, lc)} {window}", ev
        if tot_ns + tot_lc > 0:
            return (
                f"{_misses(tot_ns, tot_lc)} in {counted(k, 'appointment')} so far, "
                f"none in the last {RECENT_APPOINTMENTS}",
                ev,
            )
        return None
    if ns + lc > 0:
        return None
    if tot_ns + tot_lc == 0:
        return f"No no-shows or late cancellations in {counted(k, 'appointment')} so far", ev
    return f"No no-shows or late cancellations {window} ({_misses(tot_ns, tot_lc)} earlier)", ev


def _streak(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    s = whole(f.attendance_missed_streak)
    ev: Evidence = {"fact": "missed_streak", "missed_in_a_row": s, "session": f.sn_now}
    if up and s == 1:
        return (
            f"Missed the latest appointment (session {f.sn_now}, {_CODE_TEXT[f.code_now]})",
            ev,
        )
    if up and s > 1:
        return f"Missed the last {s} appointments in a row (no-shows or late cancellations)", ev
    if not up and s == 0 and f.code_now == ATTENDED_CODE:
        return f"Attended the latest appointment (session {f.sn_now})", ev
    return None


def _first3(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    n = whole(f.attendance_no_show_first3)
    ev: Evidence = {"fact": "no_show_first3", "no_shows": n}
    if up and n > 0:
        return f"{counted(n, 'no-show')} among appointments 1-3", ev
    if not up and n == 0:
        return "No no-shows among appointments 1-3", ev
    return None


def _attended_share(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    k, a = f.k, whole(f.attendance_attended_count)
    pct = round(100 * a / k)
    return f"Attended {a} of {counted(k, 'appointment')} ({pct}%)", {
        "fact": "attended_share",
        "attended": a,
        "appointments": k,
        "percent": pct,
    }


def _cancellations(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    c = whole(f.attendance_cancelled_count)
    r = whole(f.attendance_rescheduled_count)
    ev: Evidence = {"fact": "cancellations", "cancelled": c, "rescheduled": r, "appointments": f.k}
    if up and c + r > 0:
        parts = [counted(c, "cancelled appointment")] if c else []
        parts += [counted(r, "rescheduled appointment")] if r else []
        return f"{listed(parts)} so far", ev
    if not up and c + r == 0:
        return "No cancelled or rescheduled appointments so far", ev
    return None


def _gaps(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    gmax, gmean = f.attendance_gap_max_days, f.attendance_gap_mean_days
    if f.k < 2 or not finite(gmax, gmean):
        return None
    return (
        f"Longest gap between appointments {counted(whole(gmax), 'day')} (mean {counted(whole(gmean), 'day')})",
        {"fact": "gaps", "gap_max_days": whole(gmax), "gap_mean_days": whole(gmean)},
    )


def _landmark(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    sn = f.sn_now
    ev: Evidence = {"fact": "landmark", "session": sn}
    if sn <= RECENT_APPOINTMENTS:
        return f"Early in therapy: appointment {sn}", ev
    return f"Appointment {sn} of the episode", ev


def _since_intake(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    d = f.engagement_days_since_intake
    if not isfinite(d):
        return None
    days = whole(d)
    return f"{counted(days, 'day')} since intake ({counted(f.k, 'appointment')})", {
        "fact": "days_since_intake",
        "days": days,
        "appointments": f.k,
    }


def _since_attended(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    d = f.engagement_days_since_attended
    if not isfinite(d):
        return _never_attended(f, g, up)
    days = whole(d)
    ev: Evidence = {"fact": "days_since_attended", "days": days, "session": f.sn_now}
    if days == 0:
        return f"Attended the latest appointment (session {f.sn_now})", ev
    return f"{counted(days, 'day')} since the last attended session", ev


def _never_attended(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    if f.engagement_never_attended != 1:
        return None
    return f"No appointment attended yet ({counted(f.k, 'appointment')} scheduled)", {
        "fact": "never_attended",
        "appointments": f.k,
    }


def _never_rated(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    if f.engagement_never_rated != 1:
        return None
    a = whole(f.attendance_attended_count)
    attended = counted(a, "attended session") if a else "no session attended"
    return f"No alliance rating recorded yet ({attended})", {"fact": "never_rated", "attended": a}


def _unrated(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    share, a = f.engagement_unrated_share, whole(f.attendance_attended_count)
    if not isfinite(share) or a < 1:
        return None
    u = whole(share * a)
    ev: Evidence = {"fact": "unrated", "unrated": u, "attended": a}
    if up and u > 0:
        return f"{u} of {counted(a, 'attended session')} without an alliance rating", ev
    if not up and u == 0:
        every = "the 1 attended session" if a == 1 else f"all {a} attended sessions"
        return f"Alliance rated at {every}", ev
    return None


def _age(f: ActivityFacts, g: Group, up: bool) -> Sentence:
    age = f.client_age
    if not isfinite(age):
        return "Client age not recorded", {"fact": "age", "age_years": None}
    young = age < YOUNG_AGE_YEARS
    text = f"Client {'younger than' if young else 'aged at least'} {fmt(YOUNG_AGE_YEARS)} years"
    return text, {"fact": "age", "age_years": int(age)}


#: Sentence kind (the topics of :mod:`models.drivers.tables`) -> its builder.


#: Sentence kind -> builder.
BUILDERS: dict[str, Callable[[ActivityFacts, Group, bool], Sentence]] = {
    "recent_missed": _recent_missed,
    "streak": _streak,
    "first3": _first3,
    "attended_share": _attended_share,
    "cancellations": _cancellations,
    "gaps": _gaps,
    "landmark": _landmark,
    "since_intake": _since_intake,
    "since_attended": _since_attended,
    "never_attended": _never_attended,
    "never_rated": _never_rated,
    "unrated": _unrated,
    "age": _age,
}
