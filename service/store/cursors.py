"""The opaque page cursors of the store's keyset pages, sealed with AES-256-SIV
(:class:`CursorSeal`): the caseload's (every order, the JSON endpoint's and the dashboard's) and
a client's risk history.

A cursor travels in URLs, browser histories and access logs, and an integrator treats it as
opaque. What it carries (a probability, a store row or score id, and for the dashboard's other
orders the last row's therapist id, client id or appointment date) is encrypted and
authenticated under a key of the service, with the clinic as associated data: nobody can read
it, and a cursor changed by one bit, sealed under another key (a rotated audit key) or issued to
another clinic does not open (:class:`BadCursor`, whose message names no value of it).

AES-SIV (RFC 5297, ``cryptography``'s ``AESSIV``) is deterministic authenticated encryption:
the same position of the same clinic seals to the same cursor, so a page's body, and the strong
ETag that stands for it, do not change from one render to the next, without a nonce to derive
or store. What it gives away by design: two equal cursors are seen to be equal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

#: Bytes of the synthetic IV (the authentication tag) at the start of a sealed cursor.
TAG_BYTES = 16
_AAD = b"alliance-risk cursor v2\x00"
#: Label the AES-256-SIV key (512 bits: a MAC key and an encryption key) is derived under.
_SIV_LABEL = b"alliance-risk cursor AES-SIV key"


class BadCursor(ValueError):
    """Not a cursor this service issued (the message names no value of it)."""


class CursorSeal:
    """Seals cursors with AES-256-SIV under one key, bound to a clinic.

    ``key`` is 32 bytes that every worker of the service shares (derived from the audit key:
    :func:`service.store.deps.cursor_seal`); the SIV key is an HMAC-SHA512 of a fixed label
    under it.
    """

    __slots__ = ("_siv",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a cursor key is 32 bytes")
        self._siv = AESSIV(hmac.digest(key, _SIV_LABEL, hashlib.sha512))

    def __repr__(self) -> str:
        return "CursorSeal(key=<hidden>)"

    def seal(self, key: list[Any], clinic_id: str) -> str:
        """``key`` as JSON, encrypted and authenticated for ``clinic_id``, in URL-safe base64."""
        return _b64(self._siv.encrypt(orjson.dumps(key), [_aad(clinic_id)]))

    def open(self, cursor: str, clinic_id: str) -> Any:
        """The JSON value of :meth:`seal` for this clinic; :class:`BadCursor` for a cursor that
        was changed, sealed under another key or for another clinic, or is not one at all."""
        raw = _unb64(cursor)
        if len(raw) <= TAG_BYTES:
            raise BadCursor("not a cursor this service issued")
        try:
            return orjson.loads(self._siv.decrypt(raw, [_aad(clinic_id)]))
        except (InvalidTag, orjson.JSONDecodeError):
            raise BadCursor("not a cursor this service issued") from None


def sealed_length(plain_bytes: int) -> int:
    """Characters of a sealed cursor whose JSON is ``plain_bytes`` long (the 16-byte synthetic
    IV added, base64 without padding)."""
    return -(-(TAG_BYTES + plain_bytes) * 4 // 3)


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
