"""``utc_iso_ms``: the cached-second formatting equals datetime's, in any order of calls."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from service.audit import _is_time, utc_timestamp
from service.clock import utc_iso_ms


def _reference(t: float) -> str:
    moment = datetime.fromtimestamp(t, UTC)
    # datetime rounds the float to whole microseconds; milliseconds are truncated from there.
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# Times whose float has more digits than datetime keeps can differ by the last millisecond
# when a microsecond rounding crosses it; whole microseconds are what clocks give anyway.
_TIMES = st.integers(0, 4_102_444_800 * 10**6).map(lambda us: us / 10**6)


@given(st.lists(_TIMES, min_size=1, max_size=20))
def test_equals_datetime_formatting_whatever_came_before(times: list[float]) -> None:
    for t in times:
        assert utc_iso_ms(t) == _reference(t)


def test_each_second_and_millisecond_edge() -> None:
    base = 1_788_220_800  # 2026-09-01T00:00:00Z
    assert utc_iso_ms(base) == "2026-09-01T00:00:00.000Z"
    assert utc_iso_ms(base + 0.999) == "2026-09-01T00:00:00.999Z"
    assert utc_iso_ms(base + 1) == "2026-09-01T00:00:01.000Z"  # a new second after a cached one
    assert utc_iso_ms(base - 0.5) == "2026-08-31T23:59:59.500Z"  # and back again
    assert utc_iso_ms(base + 0.9998) == "2026-09-01T00:00:00.999Z"  # truncated, never .1000


def test_the_audit_timestamp_has_the_audit_format() -> None:
    assert _is_time(utc_timestamp())
