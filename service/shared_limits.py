"""One rate limit for all the workers of ``alliance-risk serve --workers N``.

:class:`service.limits.RateLimiter` keeps its buckets in the process, so N workers would grant a
clinic N times its rate. :class:`SharedRateLimiter` keeps them in a SQLite file in the folder the
workers share (``ALLIANCE_RISK_LIMIT_SHARED_DIR``, set by ``serve`` with more than one worker),
and applies the same token-bucket rule (the base class's ``check``) inside one write transaction
per request, so the budget holds overall.

The file holds bucket levels by clinic id and token id (never a client's data), in a fresh
folder only the service's user can read, removed when ``serve`` exits. ``time.monotonic`` is one
clock for every process of the machine (Linux ``CLOCK_MONOTONIC``), so the workers' timestamps
compare.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from service.limits import BucketSpec, RateLimiter, _Bucket

#: File name of the buckets inside the shared folder.
DB_NAME = "rate-limits.sqlite"
#: Checks between two sweeps of refilled (forgettable) buckets out of the file.
SWEEP_EVERY = 256


class SharedRateLimiter(RateLimiter):
    """:class:`RateLimiter` whose buckets live in ``folder/rate-limits.sqlite``, shared by every
    process that opens the same folder. Same parameters and results as the base class."""

    def __init__(
        self,
        specs: Mapping[str, BucketSpec],
        folder: Path,
        *,
        max_buckets: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(specs, max_buckets=max_buckets, clock=clock)
        self.path = Path(folder) / DB_NAME
        # Autocommit mode: transactions are the explicit BEGIN IMMEDIATE in check().
        self._db = sqlite3.connect(
            self.path, timeout=10, isolation_level=None, check_same_thread=False
        )
        # The levels are worth nothing after a crash: no fsync on the request path.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS buckets (kind TEXT NOT NULL, key TEXT NOT NULL, "
            "tokens REAL NOT NULL, stamp REAL NOT NULL, PRIMARY KEY (kind, key))"
        )
        self._checks = 0

    def check(self, keys: Mapping[str, str], cost: float = 1.0) -> float | None:
        """As :meth:`RateLimiter.check`, across every process sharing the folder."""
        idents = [(kind, key) for kind, key in keys.items() if kind in self.specs]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
            try:
                self._buckets.clear()
                for kind, key in idents:
                    row = self._db.execute(
                        "SELECT tokens, stamp FROM buckets WHERE kind = ? AND key = ?",
                        (kind, key),
                    ).fetchone()
                    if row is not None:
                        self._buckets[(kind, key)] = _Bucket(tokens=row[0], stamp=row[1])
                wait = super().check(keys, cost)
                self._db.executemany(
                    "INSERT OR REPLACE INTO buckets (kind, key, tokens, stamp) VALUES (?, ?, ?, ?)",
                    [(k, v, b.tokens, b.stamp) for (k, v), b in self._buckets.items()],
                )
                self._checks += 1
                if self._checks % SWEEP_EVERY == 0:
                    self._sweep()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._buckets.clear()
        return wait

    def _sweep(self) -> None:
        now = self.clock()
        # A bucket idle until it refilled is the same as no bucket (see the base class).
        for kind, spec in self.specs.items():
            self._db.execute(
                "DELETE FROM buckets WHERE kind = ? AND stamp <= ?", (kind, now - spec.refill_s)
            )
        self._db.execute(
            "DELETE FROM buckets WHERE rowid IN (SELECT rowid FROM buckets ORDER BY stamp DESC "
            "LIMIT -1 OFFSET ?)",
            (self.max_buckets,),
        )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM buckets").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
