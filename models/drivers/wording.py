"""How the sentences quote numbers: ratings with 1 decimal, whole counts, plurals."""

from __future__ import annotations

from math import floor, isfinite

from models.results import Evidence

#: A sentence's text and evidence, or None when its facts do not support it.
Sentence = tuple[str, Evidence] | None


def rating_text(x: float) -> str:
    """A rating with 1 decimal, never ``-0.0``: the text of :func:`rating` of ``x``."""
    # "z" (PEP 682) turns a rounded -0.0 into 0.0; both round the exact binary value half-even.
    return f"{x:z.1f}"


def below(x: float, cutoff: float) -> float:
    """A rating known to be below ``cutoff``, for the evidence: :func:`rating` unless that would
    round it up to the cut-off itself (8.96, never "9.0, below the cut-off 9"); then with 2
    decimals, rounded down."""
    if rating(x) < cutoff:
        return rating(x)
    return floor(x * 100 + 1e-9) / 100 + 0.0


def below_text(x: float, cutoff: float) -> str:
    """The text of :func:`below`: 1 decimal, or 2 when 1 would reach the cut-off."""
    if rating(x) < cutoff:
        return rating_text(x)
    return f"{below(x, cutoff):z.2f}"


def rating(x: float) -> float:
    """A rating for the evidence: rounded as in the text."""
    return round(x, 1) + 0.0


def whole(x: float) -> int:
    """A count or day count from a feature value (0 where undefined)."""
    return int(round(x)) if isfinite(x) else 0


def counted(count: int, singular: str) -> str:
    """``1 no-show``, ``2 no-shows``."""
    return f"{count} {singular if count == 1 else singular + 's'}"


def listed(parts: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(parts) if len(parts) <= 2 else ", ".join(parts[:-1]) + " and " + parts[-1]


def finite(*xs: float) -> bool:
    """Every value is finite."""
    return all(map(isfinite, xs))
