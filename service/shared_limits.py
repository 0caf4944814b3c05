"""One rate limit, and one set of used CDS Hooks token ids, for all the workers of
``alliance-risk serve --workers N``.

:class:`service.limits.RateLimiter` keeps its buckets in the process, so N workers would grant a
clinic N times its rate. :class:`SharedRateLimiter` keeps them in a SQLite file in the folder the
workers share (``ALLIANCE_RISK_LIMIT_SHARED_DIR``, set by ``serve`` with more than one worker),
and applies the same token-bucket rule (the base class's ``check``) inside one write transaction
per request, so the budget holds overall.

The file holds bucket levels by clinic id and token id (never a client's data), in a fresh
folder only the service's user can read, removed when ``serve`` exits. ``time.monotonic`` is one
clock for every process of the machine (Linux ``CLOCK_MONOTONIC``), so the workers' timestamps
compare.

:class:`SharedJtiReplayCache` does the same for the CDS Hooks replay cache: a ``jti`` accepted by
one worker is refused by every other (one row per issuer and token id, as a SHA-256, kept until
the token expires).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from service.limits import BucketSpec, RateLimiter, _Bucket

logger = logging.getLogger(__name__)

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


#: File name of the single-use token ids inside the shared folder.
JTI_DB_NAME = "jti-replay.sqlite"


class SharedJtiReplayCache:
    """:class:`~service.auth.caches.JtiReplayCache` across every process sharing ``folder``: a
    CDS Hooks ``jti`` presented to one worker is a replay at every other.

    One row per ``iss``+``jti`` (stored as its SHA-256, never as text) with its expiry, in
    ``folder/jti-replay.sqlite``; ``INSERT ... ON CONFLICT DO NOTHING`` inside one write
    transaction decides who saw it first, and expired rows are purged on the way. Fail closed:
    a full table (``max_entries`` live ids) or a database error is a replay, never an accept.
    Expiries are wall-clock seconds (``time.time``), as the token's ``exp``.
    """

    def __init__(self, folder: Path, max_entries: int = 100_000, *,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.path = Path(folder) / JTI_DB_NAME
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=10, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # A lost row after a power cut could let a token be replayed within its few minutes;
        # NORMAL keeps WAL commits durable against a process crash, which is what workers do.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jti (digest BLOB PRIMARY KEY, exp REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS jti_exp ON jti (exp)")

    def seen(self, jti: str, exp: float) -> bool:
        """True if ``jti`` is a replay (or the table is full, or unreadable); otherwise
        remember it until ``exp`` (seconds since the epoch)."""
        now = self._clock()
        digest = hashlib.sha256(jti.encode()).digest()
        with self._lock:
            try:
                return self._seen(digest, exp, now)
            except sqlite3.Error as exc:
                logger.error("shared jti replay cache unavailable; refusing single-use token",
                             extra={"fields": {"error": type(exc).__name__}})  # fmt: skip
                return True

    def _seen(self, digest: bytes, exp: float, now: float) -> bool:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM jti WHERE exp <= ?", (now,))
            known = self._db.execute("SELECT 1 FROM jti WHERE digest = ?", (digest,)).fetchone()
            if known is not None:
                replay = True
            elif exp <= now:
                replay = False  # already expired: the token check refuses it
            elif self._db.execute("SELECT count(*) FROM jti").fetchone()[0] >= self.max_entries:
                logger.warning("jti replay cache full; refusing single-use token")
                replay = True
            else:
                inserted = self._db.execute(
                    "INSERT INTO jti (digest, exp) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING",
                    (digest, exp),
                )
                replay = inserted.rowcount != 1
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return replay

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM jti WHERE exp > ?", (self._clock(),))
            return int(row.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
