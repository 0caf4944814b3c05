"""The opaque page cursors of the store's keyset pages, sealed with AES-256-GCM
(:class:`CursorSeal`): the caseload's (every order, the JSON endpoint's and the dashboard's) and
a client's risk history.

A cursor travels in URLs, browser histories and access logs, and an integrator treats it as
opaque. What it carries (a probability, a store row or score id, and for the dashboard's other
orders the last row's therapist id, client id or appointment date) is encrypted and
authenticated under a key of the service, with the clinic as associated data: nobody can read
it, and a cursor changed by one bit, sealed under another key (a rotated audit key) or issued to
another clinic does not open (:class:`BadCursor`, whose message names no value of it).

The nonce is synthetic (an HMAC of the clinic and the plaintext, the SIV construction of
Rogaway and Shrimpton 2006): the same position of the same clinic seals to the same cursor, so
a page's body, and the strong ETag that stands for it, do not change from one render to the
next; two different positions get different nonces (a collision is a 96-bit accident).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Bytes of the AES-GCM nonce written at the start of a sealed cursor (NIST SP 800-38D).
NONCE_BYTES = 12
_AAD = b"alliance-risk cursor v1\x00"
#: Labels the encryption and the nonce keys are derived under (one key, one job).
_ENCRYPTION_LABEL = b"alliance-risk cursor encryption key"
_NONCE_LABEL = b"alliance-risk cursor nonce key"


class BadCursor(ValueError):
    """Not a cursor this service issued (the message names no value of it)."""


class CursorSeal:
    """Seals cursors with AES-256-GCM under one key, bound to a clinic.

    ``key`` is 32 bytes that every worker of the service shares (derived from the audit key:
    :func:`service.store.deps.cursor_seal`); the encryption key and the nonce key are HMACs of
    fixed labels under it.
    """

    __slots__ = ("_aead", "_nonce_mac")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a cursor key is 32 bytes")
        self._aead = AESGCM(hmac.digest(key, _ENCRYPTION_LABEL, hashlib.sha256))
        self._nonce_mac = hmac.new(hmac.digest(key, _NONCE_LABEL, hashlib.sha256), None, "sha256")

    def __repr__(self) -> str:
        return "CursorSeal(key=<hidden>)"

    def seal(self, key: list[Any], clinic_id: str) -> str:
        """``key`` as JSON, encrypted and authenticated for ``clinic_id``, in URL-safe base64."""
        plain, aad = orjson.dumps(key), _aad(clinic_id)
        mac = self._nonce_mac.copy()
        mac.update(len(aad).to_bytes(8, "big") + aad + plain)  # length-prefixed: unambiguous
        nonce = mac.digest()[:NONCE_BYTES]
        return _b64(nonce + self._aead.encrypt(nonce, plain, aad))

    def open(self, cursor: str, clinic_id: str) -> Any:
        """The JSON value of :meth:`seal` for this clinic; :class:`BadCursor` for a cursor that
        was changed, sealed under another key or for another clinic, or is not one at all."""
        raw = _unb64(cursor)
        if len(raw) <= NONCE_BYTES:
            raise BadCursor("not a cursor this service issued")
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(clinic_id))
            return orjson.loads(plain)
        except (InvalidTag, orjson.JSONDecodeError):
            raise BadCursor("not a cursor this service issued") from None


def sealed_length(plain_bytes: int) -> int:
    """Characters of a sealed cursor whose JSON is ``plain_bytes`` long (nonce and 16-byte tag
    added, base64 without padding)."""
    return -(-(NONCE_BYTES + plain_bytes + 16) * 4 // 3)


def _aad(clinic_id: str) -> bytes:
    return _AAD + clinic_id.encode("utf-8", "surrogatepass")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(cursor: str) -> bytes:
    """The bytes of :func:`_b64`; only its canonical form (a cursor whose characters differ but
    decode alike, such as ``+`` for ``-`` or other unused bits in the last one, is refused)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise BadCursor("not a cursor this service issued") from None
    if _b64(raw) != cursor:
        raise BadCursor("not a cursor this service issued")
    return raw
