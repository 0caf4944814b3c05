"""UTC timestamps with milliseconds, as the audit records and the log lines write them."""

from __future__ import annotations

import time

#: (whole second, its "YYYY-MM-DDTHH:MM:SS." text): the last second formatted. Requests in the
#: same second reuse it; strftime and gmtime were ~1.5 us of each audit record and log line.
_last_second: tuple[int, str] = (-1, "")


def utc_iso_ms(t: float) -> str:
    """``t`` (seconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC: rounded to the
    microsecond like ``datetime.fromtimestamp``, then milliseconds truncated."""
    global _last_second
    # Whole microseconds first, as datetime does: 1586020981.369 is 1586020981.36899... as a
    # float, and truncating that to milliseconds would say .368.
    second, micro = divmod(round(t * 1e6), 1_000_000)
    cached, prefix = _last_second  # one tuple: a reader never sees half of an update
    if cached != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _last_second = (second, prefix)
    return f"{prefix}{micro // 1000:03d}Z"
