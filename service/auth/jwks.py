"""Issuers' public keys: ``keys_from_jwks`` turns a JWKS document into the keys a token may be
verified with, and ``JwksSource`` loads one issuer's JWKS from a file or URL and caches it.

What a source guarantees:

- asymmetric keys only (RSA of 2048 bits or more, EC on P-256 or P-384), each limited to the
  algorithms its type allows; ``oct`` keys, encryption keys and keys without a ``kid`` are
  skipped;
- URL fetches go to ``https`` (plain ``http`` only to a loopback address, never via a proxy),
  follow no redirect, read at most 1 MiB and give up after ``timeout_s``;
- the keys are trusted for ``cache_s``; an unknown ``kid`` causes one early refetch (key
  rotation), and reloads, failed ones included, happen at most once per ``cooldown_s``;
- when a reload fails the last good keys stay in use; ``JwksUnavailable`` (a 503 for the
  caller) only when no keys were ever loaded.

Loading is blocking I/O and holds the source's lock, so concurrent requests for one issuer wait
for a single fetch rather than each starting their own. Call it from a worker thread (FastAPI
runs ``def`` dependencies in its thread pool), never on the event loop.

Why not PyJWT's ``PyJWKClient`` (PyJWT 2.15): keeping the guarantees above would mean
overriding nearly all of it. It has no stale-key fallback (once its cache lifespan has passed,
``get_jwk_set`` refetches and raises on failure while the old set sits unused in the cache); it
does not throttle failed fetches (its cooldown applies only to unknown-kid refreshes and starts
on success, so during an outage every request, serialised on its lock, pays a full timeout);
``fetch_data`` reads the whole body with no size cap; ``PyJWKSet`` accepts ``oct`` keys as
HS256 and refuses a set with no usable key, so ``keys_from_jwks`` would still have to re-check
every key, from raw JWKs that the client's cache no longer holds; its clock is hard-wired to
``time.monotonic`` (the cache and cooldown tests inject one); and it fetches URLs only, while
``jwks_file`` and dev mode need the same cache over a file. Overriding ``fetch_data``,
``get_jwk_set`` and ``get_signing_key`` would leave only its constructor.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.auth.settings import IssuerConfig, is_loopback

# The package's one logger name, as before the split: log filters and alerts key on it.
logger = logging.getLogger("service.auth")

_MAX_JWKS_BYTES = 1 << 20
_READ_CHUNK_BYTES = 1 << 16
_MIN_RSA_BITS = 2048
#: Curve -> the one algorithm a key on it may sign with.
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384"}


@dataclass(frozen=True)
class VerificationKey:
    """A public key and the algorithms a token signed with it may name."""

    key: Any  # a cryptography public key object
    algorithms: tuple[str, ...]


def keys_from_jwks(doc: Any) -> dict[str, VerificationKey]:
    """The usable signing keys of a JWKS document, by ``kid``.

    Skipped: keys without a ``kid`` (a token cannot select them), symmetric (``oct``) keys, keys
    for encryption (``use`` other than ``sig``), curves other than P-256/P-384, RSA keys under
    2048 bits, and keys whose ``alg`` is not one of ``ALGORITHMS``.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("JWKS document has no 'keys' list")
    out: dict[str, VerificationKey] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid, kty, alg = jwk.get("kid"), jwk.get("kty"), jwk.get("alg")
        if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
            continue
        if kty == "RSA":
            allowed: tuple[str, ...] = ("RS256", "RS384")
        elif kty == "EC" and jwk.get("crv") in _EC_ALGORITHMS:
            allowed = (_EC_ALGORITHMS[jwk["crv"]],)
        else:
            continue
        if alg is not None:
            if alg not in allowed:
                continue
            allowed = (alg,)
        try:
            key = (RSAAlgorithm if kty == "RSA" else ECAlgorithm).from_jwk(jwk)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            # A JWKS should never hold private parts; use the public half and say so.
            logger.warning("JWKS holds private key material", extra={"fields": {"kid": kid}})
            key = key.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
            continue
        out[kid] = VerificationKey(key, allowed)
    return out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could move a JWKS fetch from https to somewhere else; refuse all."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class JwksUnavailable(Exception):
    """An issuer's keys could not be loaded and none are cached."""


class JwksSource:
    """One issuer's keys, from a file or a URL, cached for ``cache_s`` seconds.

    Thread-safe. An unknown ``kid`` triggers one early reload (key rotation), at most once per
    ``cooldown_s``. When a reload fails, the previous keys stay in use (an issuer outage must
    not lock every client out) and the failure is logged.

    ``get`` and ``warm`` block while a URL is fetched: about ``timeout_s`` at most (the fetch
    gives up once ``timeout_s`` has passed, checked between reads that are each limited to
    ``timeout_s``, so never more than twice that, plus name resolution). Other threads asking
    the same source wait for that fetch. Call them from a worker thread.
    """

    def __init__(self, config: IssuerConfig, *, cache_s: float = 300.0, timeout_s: float = 3.0,
                 cooldown_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.config = config
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, VerificationKey] | None = None
        self._loaded_at = -float("inf")
        self._attempted_at = -float("inf")
        #: Completed loads (file reads or fetches), for tests and metrics.
        self.loads = 0

    def _read(self) -> Any:
        if self.config.jwks_file is not None:
            return json.loads(self.config.jwks_file.read_text(encoding="utf-8"))
        url = self.config.jwks_url or ""
        handlers: list[Any] = [_NoRedirect()]
        if is_loopback(urlsplit(url).hostname):
            handlers.append(urllib.request.ProxyHandler({}))  # loopback never goes via a proxy
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        # The socket timeout limits each connect and read; the deadline limits the whole body,
        # so an endpoint trickling bytes cannot hold the lock (and every waiting request).
        deadline = time.monotonic() + self.timeout_s
        body = bytearray()
        with opener.open(request, timeout=self.timeout_s) as response:
            while chunk := response.read1(_READ_CHUNK_BYTES):
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise ValueError("JWKS document is too large")
                if time.monotonic() > deadline:
                    raise TimeoutError("JWKS fetch exceeded its timeout")
        return json.loads(body)

    def _reload(self) -> bool:
        """Load the keys; on failure keep the old ones (caller holds the lock)."""
        self._attempted_at = self._clock()
        try:
            keys = keys_from_jwks(self._read())
        except Exception as exc:  # any I/O, HTTP or parse failure: keep serving cached keys
            logger.warning(
                "JWKS load failed",
                extra={"fields": {"issuer": self.config.issuer, "error": type(exc).__name__}},
            )
            return False
        self._keys = keys
        self._loaded_at = self._attempted_at
        self.loads += 1
        return True

    def get(self, kid: str) -> VerificationKey | None:
        """The key with ``kid``, or None. Raises ``JwksUnavailable`` if nothing could be loaded.

        Reloads are throttled to one per ``cooldown_s``, failed ones included, so an issuer
        outage costs at most one timeout per cooldown rather than one per request.
        """
        with self._lock:
            expired = self._keys is None or self._clock() - self._loaded_at >= self.cache_s
            may_reload = self._clock() - self._attempted_at >= self.cooldown_s
            if expired and may_reload:
                self._reload()
                may_reload = False  # just loaded: an unknown kid is unknown to the issuer too
            if self._keys is None:
                raise JwksUnavailable(self.config.issuer)
            key = self._keys.get(kid)
            if key is None and may_reload:
                self._reload()
                key = self._keys.get(kid)
            return key

    def warm(self) -> bool:
        """Load the keys now (start-up); True when keys are available."""
        with self._lock:
            self._reload()
            return self._keys is not None
