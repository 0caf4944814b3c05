"""Sentences of alliance elements and the overall alliance: trends, levels, ruptures, cut-offs.

Each takes the pair's :class:`~models.drivers.facts.RatingFacts`, its group and whether the group
raises the risk, and returns ``(text, evidence)`` or None.
"""

from __future__ import annotations

from collections.abc import Callable
from math import isfinite

from models.drivers.facts import RECENT_RATED, RatingFacts
from models.drivers.tables import Group, fmt
from models.drivers.wording import (
    Sentence,
    below,
    below_text,
    counted,
    finite,
    rating,
    rating_text,
)
from models.results import Evidence


def _trend(f: RatingFacts, g: Group, up: bool, span: int, fact: str) -> Sentence:
    m = f.m
    if m < 2:
        return None
    k = span if span < m else m - 1
    old, new = (f.v0, f.v1, f.v2, f.v3)[k], f.v0
    if not (isfinite(old) and isfinite(new)):
        return None
    a, b = rating(old), rating(new)
    if up != (b < a):
        return None
    over = "since the previous rated session" if k == 1 else f"over the last {k} rated sessions"
    if b < a:
        text = f"{g.subject} fell from {rating_text(old)} to {rating_text(new)} {over}"
    elif b > a:
        text = f"{g.subject} rose from {rating_text(old)} to {rating_text(new)} {over}"
    else:
        text = f"{g.subject} held steady at {rating_text(new)} {over}"
    ev: Evidence = {
        "fact": fact,
        "from": a,
        "to": b,
        "from_session": (f.sn0, f.sn1, f.sn2, f.sn3)[k],
        "to_session": f.sn0,
        "rated_sessions": k,
    }
    return text, ev


def _trend3(f: RatingFacts, g: Group, up: bool) -> Sentence:
    return _trend(f, g, up, RECENT_RATED, "trend")


def _change_prev(f: RatingFacts, g: Group, up: bool) -> Sentence:
    return _trend(f, g, up, 1, "change_prev")


def _first_last(f: RatingFacts, g: Group, up: bool) -> Sentence:
    first, last = f.first, f.v0
    if f.m < 2 or not (isfinite(first) and isfinite(last)):
        return None
    a, b = rating(first), rating(last)
    if up != (b < a):
        return None
    if b != a:
        verb = "fell" if b < a else "rose"
        text = (
            f"{g.subject} {verb} from {a:.1f} at session {f.first_sn} to {b:.1f} at session {f.sn0}"
        )
    else:
        text = f"{g.subject} held steady at {b:.1f} from session {f.first_sn} to session {f.sn0}"
    ev: Evidence = {
        "fact": "first_to_last",
        "from": a,
        "to": b,
        "from_session": f.first_sn,
        "to_session": f.sn0,
        "rated_sessions": f.m,
    }
    return text, ev


def _level(f: RatingFacts, g: Group, up: bool) -> Sentence:
    m, last = f.m, f.v0
    if m < 1 or not isfinite(last):
        return None
    s = f.sn0
    n3 = m if m < RECENT_RATED else RECENT_RATED
    mean3 = f.last3_mean
    if not isfinite(mean3):
        mean3 = last
    ev: Evidence = {"fact": "level", "latest": rating(last), "session": s}
    if n3 > 1:
        ev["recent_mean"] = rating(mean3)
        ev["rated_sessions"] = n3
    if g.has_cutoff:
        ev["cutoff"] = g.cutoff_r2
        if not up and mean3 >= g.cutoff:
            spread = f.spread
            steady = n3 > 1 and isfinite(spread) and spread <= g.steady + 1e-9
            quality = "high and steady" if steady else "high"
            if n3 > 1:
                return (
                    f"{g.subject} {g.verb} {quality} ({rating_text(mean3)} over the last {n3} rated "
                    "sessions)",
                    ev,
                )
            return f"{g.subject} {g.verb} {quality} ({rating_text(mean3)} at session {s})", ev
    if up and f.below_cutoff == 1:
        ev["latest"] = below(last, g.cutoff)
        return (
            f"{g.subject} {g.verb} {below_text(last, g.cutoff)} at session {s}, below the cut-off "
            f"{g.cutoff_text}",
            ev,
        )
    # Against the client's own recent ratings: a dip is a reason for concern at any level.
    if n3 > 1 and up == (rating(last) < rating(mean3)) and rating(last) != rating(mean3):
        where = "below" if up else "above"
        return (
            f"{g.subject} {g.verb} {rating_text(last)} at session {s}, {where} its mean of "
            f"{rating_text(mean3)} over the last {n3} rated sessions",
            ev,
        )
    # A rating at or above the cut-off quoted as a reason for risk (or one below it as
    # protective) reads as the opposite of what a clinician knows: decline, as _early does, and
    # let the next fact of the group say it.
    if g.has_cutoff and up != (last < g.cutoff):
        return None
    if n3 > 1:
        text = (
            f"{g.subject} {g.verb} {rating_text(last)} at session {s} "
            f"(mean {rating_text(mean3)} over the last {n3} rated sessions)"
        )
        return text, ev
    return f"{g.subject} {g.verb} {rating_text(last)} at session {s}", ev


def _cutoff(f: RatingFacts, g: Group, up: bool) -> Sentence:
    last = f.v0
    if f.m < 1 or not (isfinite(last) and g.has_cutoff):
        return None
    under = f.below_cutoff == 1
    if up != under:
        return None
    if under:
        lv, where, shown = below(last, g.cutoff), "below", below_text(last, g.cutoff)
    else:
        lv, where = rating(last), "at or above"
        shown = f"{lv:.1f}"
    text = f"{g.subject} {g.verb} {shown} at session {f.sn0}, {where} the cut-off {g.cutoff_text}"
    ev: Evidence = {
        "fact": "cutoff",
        "latest": lv,
        "session": f.sn0,
        "cutoff": g.cutoff_r2,
        "below_cutoff": int(under),
    }
    return text, ev


def _own_mean(f: RatingFacts, g: Group, up: bool) -> Sentence:
    dev, last = f.dev_own_mean, f.v0
    if f.m < 2 or not (isfinite(dev) and isfinite(last)):
        return None
    lv, mv = rating(last), rating(last - dev)
    below = lv < mv
    if up != below:
        return None
    ev: Evidence = {"fact": "own_mean", "latest": lv, "session": f.sn0, "own_mean": mv}
    if below:
        return (
            f"{g.subject} {g.verb} {lv:.1f} at session {f.sn0}, {rating_text(mv - lv)} below this "
            f"client's own average of {mv:.1f}",
            ev,
        )
    return (
        f"{g.subject} {g.verb} {lv:.1f} at session {f.sn0}, at or above this client's own "
        f"average of {mv:.1f}",
        ev,
    )


def _early(f: RatingFacts, g: Group, up: bool) -> Sentence:
    e = f.early_mean
    if not isfinite(e):
        return None
    text = f"{g.subject} averaged {rating_text(e)} in appointments 1-3"
    ev: Evidence = {"fact": "early", "early_mean": rating(e)}
    if g.has_cutoff:
        # A good start quoted as a reason for risk (or a poor one as protective) reads as the
        # opposite of what a clinician knows; the model's push then comes from what followed,
        # so decline and let the next fact of the group say it.
        if up != (e < g.cutoff):
            return None
        ev["cutoff"] = g.cutoff_r2
        if up:
            ev["early_mean"] = below(e, g.cutoff)
            text = (
                f"{g.subject} averaged {below_text(e, g.cutoff)} in appointments 1-3, below the "
                f"cut-off {g.cutoff_text}"
            )
        else:
            text += " (a good early alliance)"
    return text, ev


def _low_point(f: RatingFacts, g: Group, up: bool) -> Sentence:
    lo, last = f.min, f.v0
    # One rating is no low point, and neither is a lowest rating at or above the cut-off.
    if not up or f.m < 2 or not (isfinite(lo) and isfinite(last)):
        return None
    if g.has_cutoff and lo >= g.cutoff:
        return None
    lov, lv = rating(lo), rating(last)
    shown = f"{lov:.1f}"
    if g.has_cutoff:  # below the cut-off: never printed as the cut-off itself
        lov, shown = below(lo, g.cutoff), below_text(lo, g.cutoff)
    ev: Evidence = {"fact": "low_point", "lowest": lov, "latest": lv, "session": f.sn0}
    if g.has_cutoff:
        ev["cutoff"] = g.cutoff_r2
    if lo >= last:
        ev["latest"] = lov
        return f"{g.subject} at its lowest so far: {shown} at session {f.sn0}", ev
    return f"{g.subject} reached a low of {shown} (latest {lv:.1f})", ev


def _variability(f: RatingFacts, g: Group, up: bool) -> Sentence:
    sd, m = f.sd, f.m
    if m < 2 or not isfinite(sd):
        return None
    # An SD of at most half the "steady" range (0.5 points on 0-10, the rupture floor) is stable.
    stable = sd <= 0.5 * g.steady + 1e-9
    if up == stable:
        return None
    quality = "stable" if stable else "unstable"
    sv = rating(sd)
    text = f"{g.subject} ratings {quality} (SD {sv:.1f} points over {m} rated sessions)"
    return text, {"fact": "variability", "sd": sv, "rated_sessions": m}


def _rupture(f: RatingFacts, g: Group, up: bool) -> Sentence:
    m, rup_sn = f.m, f.rup_sn
    n_rup = int(f.ruptures_1sd) if isfinite(f.ruptures_1sd) else 0
    if f.has_rupture == 1 and rup_sn > 0 and finite(f.rup_before, f.rup_at, f.v0):
        drop = f"dropped from {rating_text(f.rup_before)} to {rating_text(f.rup_at)}"
        unrepaired = f.unrepaired == 1
        ev: Evidence = {
            "fact": "rupture",
            "session": rup_sn,
            "from": rating(f.rup_before),
            "to": rating(f.rup_at),
            "latest": rating(f.v0),
            "ruptures": n_rup,
            "repaired": int(not unrepaired),
        }
        if unrepaired:
            if not up:
                return None
            latest = "" if f.sn0 == rup_sn else f", latest {rating_text(f.v0)}"
            return f"{g.label} rupture at session {rup_sn} not yet repaired ({drop}{latest})", ev
        if up:
            more = f"; {n_rup} ruptures so far" if n_rup > 1 else ""
            return f"{g.label} rupture at session {rup_sn} ({drop}), since repaired{more}", ev
        return (
            f"{g.label} rupture at session {rup_sn} was repaired ({drop}, latest {rating_text(f.v0)})",
            ev,
        )
    if f.has_rupture == 0 and m >= 2 and not up:
        return f"No rupture in {g.within} over {m} rated sessions", {
            "fact": "rupture",
            "ruptures": 0,
            "rated_sessions": m,
        }
    return None


def _n_rated(f: RatingFacts, g: Group, up: bool) -> Sentence:
    m = f.m
    if m == 0:
        return f"{g.label} not rated yet", {"fact": "n_rated", "rated_sessions": 0}
    return f"{g.label} rated in {counted(m, 'session')} so far", {
        "fact": "n_rated",
        "rated_sessions": m,
    }


def _element_cutoff(f: RatingFacts, g: Group, up: bool) -> Sentence:
    profile = g.profile
    flag = f.any_element_below_cutoff
    if f.m < 1 or not isfinite(flag) or up != (flag == 1):
        return None
    cut = round(profile.element_cutoff, 2)
    if flag == 1 and f.low_el >= 0 and isfinite(f.low_val):
        element = profile.elements[f.low_el]
        text = (
            f"{element.label} rated {below_text(f.low_val, profile.element_cutoff)} at session "
            f"{f.sn0}, below the element cut-off {fmt(cut)}"
        )
        ev: Evidence = {
            "fact": "element_cutoff",
            "element": element.name,
            "latest": below(f.low_val, profile.element_cutoff),
            "session": f.sn0,
            "cutoff": cut,
        }
        return text, ev
    if flag == 0:
        return f"Every element rated at or above {fmt(cut)} at session {f.sn0}", {
            "fact": "element_cutoff",
            "session": f.sn0,
            "cutoff": cut,
        }
    return None


def _ceiling(f: RatingFacts, g: Group, up: bool) -> Sentence:
    streak = f.ceiling_streak
    if not up or not isfinite(streak) or streak < 1:
        return None
    n = int(streak)
    top = g.profile.scale_max
    where = f"in the last {n} rated sessions" if n > 1 else f"at session {f.sn0}"
    return f"Perfect scores ({fmt(top)} on every element) {where}, a known warning sign", {
        "fact": "ceiling",
        "rated_sessions": n,
        "session": f.sn0,
        "scale_max": top,
    }


def _drop_alert(f: RatingFacts, g: Group, up: bool) -> Sentence:
    if not up or f.drop_alert != 1 or not finite(f.v0, f.v1):
        return None
    d = rating(f.v1) - rating(f.v0)
    text = (
        f"{g.subject} fell by {rating_text(d)} points since the previous rated session "
        f"(from {rating_text(f.v1)} to {rating_text(f.v0)})"
    )
    ev: Evidence = {
        "fact": "drop_alert",
        "from": rating(f.v1),
        "to": rating(f.v0),
        "from_session": f.sn1,
        "to_session": f.sn0,
    }
    return text, ev


#: Sentence kind -> builder.
BUILDERS: dict[str, Callable[[RatingFacts, Group, bool], Sentence]] = {
    "trend3": _trend3,
    "change_prev": _change_prev,
    "first_last": _first_last,
    "level": _level,
    "cutoff": _cutoff,
    "own_mean": _own_mean,
    "early": _early,
    "low_point": _low_point,
    "variability": _variability,
    "rupture": _rupture,
    "n_rated": _n_rated,
    "element_cutoff": _element_cutoff,
    "ceiling": _ceiling,
    "drop_alert": _drop_alert,
}
