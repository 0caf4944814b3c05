"""The opaque page cursors of the store's keyset pages, sealed with AES-256-SIV
(:class:`CursorSeal`): the caseload's (every order, the JSON endpoint's and the dashboard's) and
a client's risk history.

A cursor travels in URLs, browser histories and access logs, and an integrator treats it as
opaque. What it carries (a probability, a store row or score id, and for the dashboard's other
orders the last row's therapist id, client id or appointment date) is encrypted and
authenticated under a key of the service, with its purpose (a caseload's or a risk history's)
and the clinic as associated data: nobody can read it, and a cursor changed by one bit, sealed
under another key (a rotated audit key), issued to another clinic or for the other purpose does
not open (:class:`BadCursor`, whose message names no value of it).

AES-SIV (RFC 5297, ``cryptography``'s ``AESSIV``) is deterministic authenticated encryption:
the same position of the same clinic seals to the same cursor, so a page's body, and the strong
ETag that stands for it, do not change from one render to the next, without a nonce to derive
or store. What it gives away by design: two equal cursors are seen to be equal. Since a page's
body holds a cursor sealed under the key, its ETag holds the key's :attr:`CursorSeal.fingerprint`
(a rotated key moves every ETag: an old tag would stand for a body whose cursor no longer opens).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

#: Bytes of the synthetic IV (the authentication tag) at the start of a sealed cursor.
TAG_BYTES = 16
#: What a cursor pages through; bound into the seal (associated data), so one purpose's cursor
#: never opens as the other's, whatever its payload says.
CursorPurpose = Literal["caseload", "history"]
#: The first associated-data component of every cursor (SIV authenticates each component on
#: its own: no separator is needed between label, purpose and clinic).
_AAD = b"alliance-risk cursor v3"
#: Label the AES-256-SIV key (512 bits: a MAC key and an encryption key) is derived under.
_SIV_LABEL = b"alliance-risk cursor AES-SIV key"
#: Label of the key's public fingerprint (:attr:`CursorSeal.fingerprint`).
_FINGERPRINT_LABEL = b"alliance-risk cursor key fingerprint"


class BadCursor(ValueError):
    """Not a cursor this service issued (the message names no value of it)."""


class CursorSeal:
    """Seals cursors with AES-256-SIV under one key, bound to a clinic.

    ``key`` is 32 bytes that every worker of the service shares (derived from the audit key:
    :func:`service.store.deps.cursor_seal`); the SIV key is an HMAC-SHA512 of a fixed label
    under it. :attr:`fingerprint` names the key in ETags (16 hex digits: the first 8 bytes of
    an HMAC-SHA256 of another fixed label under it, which tells nothing of the key).
    """

    __slots__ = ("_siv", "fingerprint")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a cursor key is 32 bytes")
        self._siv = AESSIV(hmac.digest(key, _SIV_LABEL, hashlib.sha512))
        self.fingerprint = hmac.digest(key, _FINGERPRINT_LABEL, hashlib.sha256)[:8].hex()

    def __repr__(self) -> str:
        return "CursorSeal(key=<hidden>)"

    def seal(self, key: list[Any], clinic_id: str, purpose: CursorPurpose) -> str:
        """``key`` as JSON, encrypted and authenticated for ``purpose`` and ``clinic_id``, in
        URL-safe base64."""
        return _b64(self._siv.encrypt(orjson.dumps(key), _aad(purpose, clinic_id)))

    def open(self, cursor: str, clinic_id: str, purpose: CursorPurpose) -> Any:
        """The JSON value of :meth:`seal` for this purpose and clinic; :class:`BadCursor` for a
        cursor that was changed, sealed under another key, for another clinic or the other
        purpose, or is not one at all."""
        raw = _unb64(cursor)
        if len(raw) <= TAG_BYTES:
            raise BadCursor("not a cursor this service issued")
        try:
            return orjson.loads(self._siv.decrypt(raw, _aad(purpose, clinic_id)))
        except (InvalidTag, orjson.JSONDecodeError):
            raise BadCursor("not a cursor this service issued") from None


def sealed_length(plain_bytes: int) -> int:
    """Characters of a sealed cursor whose JSON is ``plain_bytes`` long (the 16-byte synthetic
    IV added, base64 without padding)."""
    return -(-(TAG_BYTES + plain_bytes) * 4 // 3)


def _aad(purpose: CursorPurpose, clinic_id: str) -> list[bytes]:
    return [_AAD, purpose.encode(), clinic_id.encode("utf-8", "surrogatepass")]


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
