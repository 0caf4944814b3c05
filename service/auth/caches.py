"""What the authenticator remembers between requests, in bounded memory: the claims of recently
verified tokens (``VerifiedTokenCache``) and the single-use token ids already presented
(``JtiReplayCache``).

Both are thread-safe (one lock each, held only for dictionary work, never during I/O) because
requests authenticate concurrently in the thread pool. Tokens are remembered by their SHA-256
digest, never as text.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

# The package's one logger name, as before the split: log filters and alerts key on it.
logger = logging.getLogger("service.auth")


class ReplayCache(Protocol):
    """What the authenticator asks of a replay cache (:class:`JtiReplayCache` in one process,
    :class:`service.shared_limits.SharedJtiReplayCache` across the workers of one ``serve``)."""

    def seen(self, jti: str, exp: float) -> bool: ...


class JtiReplayCache:
    """Remembers single-use token ids until their expiry, in bounded memory.

    Thread-safe. ``seen(jti, exp)`` returns True when ``jti`` was presented before and has not
    expired, else remembers it and returns False. Callers pass ``exp`` plus the clock leeway
    they accept, since a token stays usable that long.

    When ``max_entries`` live ids are held, new ids are treated as replays (fail closed):
    forgetting a live id would let that token be replayed. Size it above the single-use token
    rate times the token lifetime (for CDS Hooks: 5-minute tokens).
    """

    def __init__(self, max_entries: int = 100_000, *,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            exp, jti = heapq.heappop(self._heap)
            if self._expiry.get(jti) == exp:
                del self._expiry[jti]

    def seen(self, jti: str, exp: float) -> bool:
        """True if ``jti`` is a replay (or the cache is full); otherwise remember it until ``exp``
        (seconds since the epoch)."""
        now = self._clock()
        with self._lock:
            self._purge(now)
            if jti in self._expiry:
                return True
            if exp <= now:
                return False  # already expired: the token check refuses it, nothing to remember
            if len(self._expiry) >= self.max_entries:
                logger.warning("jti replay cache full; refusing single-use token")
                return True
            self._expiry[jti] = exp
            heapq.heappush(self._heap, (exp, jti))
            return False

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._expiry)


class VerifiedTokenCache:
    """Claims of recently verified tokens, by SHA-256 of the token, so a client reusing its
    bearer token does not pay signature verification on every request.

    Thread-safe, at most ``max_entries`` (oldest dropped first). An entry is trusted for
    ``ttl_s`` seconds (the JWKS cache time: a token stays accepted as long as the keys that
    verified it are) and never past the token's ``exp`` plus ``leeway_s``.
    """

    def __init__(self, max_entries: int, ttl_s: float, leeway_s: float, *,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.max_entries, self.ttl_s, self.leeway_s = max_entries, ttl_s, leeway_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, dict[str, Any]]] = OrderedDict()

    def get(self, digest: bytes) -> tuple[dict[str, Any] | None, bool]:
        """(claims, expired): the cached claims, or None; ``expired`` when the token was cached
        but its ``exp`` (plus leeway) has passed."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None, False
            cached_at, claims = entry
            if now - cached_at >= self.ttl_s or claims["exp"] <= now - self.leeway_s:
                del self._entries[digest]
                return None, claims["exp"] <= now - self.leeway_s
            return claims, False

    def put(self, digest: bytes, claims: dict[str, Any]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[digest] = (self._clock(), claims)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
