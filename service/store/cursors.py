"""The opaque page cursors of the store's keyset pages: a JSON array in URL-safe base64
(:func:`pack`, :func:`unpack`), or sealed (AES-256-GCM) when it carries a value that must not be
readable in a URL (:class:`CursorSeal`).

A cursor travels in URLs, browser histories and access logs. The caseload's risk order and the
risk history carry store ids and a probability only, in the clear; the dashboard's other orders
carry the last row's sort key (a therapist id, a client id, an appointment date), so theirs is
encrypted and authenticated: nobody can read it, and a cursor changed by one bit, or issued to
another clinic (the clinic is the associated data), does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Bytes of the random AES-GCM nonce written at the start of a sealed cursor (NIST SP 800-38D).
NONCE_BYTES = 12
_AAD = b"alliance-risk cursor v1\x00"


class BadCursor(ValueError):
    """Not a cursor this service issued (the message names no value of it)."""


def pack(key: list[Any]) -> str:
    """``key`` as JSON in URL-safe base64 without padding."""
    return _b64(orjson.dumps(key))


def unpack(cursor: str) -> Any:
    """The JSON value of :func:`pack`; :class:`BadCursor` for anything else."""
    try:
        return orjson.loads(_unb64(cursor))
    except orjson.JSONDecodeError:
        raise BadCursor("not a cursor this service issued") from None


class CursorSeal:
    """Seals cursors with AES-256-GCM under one key, bound to a clinic.

    ``key`` is 32 bytes that every worker of the service shares (the dashboard derives it from
    the audit key: :func:`service.dashboard.session.cursor_seal`). Each sealed cursor has a
    fresh random nonce, so the same page's cursor differs from one render to the next.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a cursor key is 32 bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "CursorSeal(key=<hidden>)"

    def seal(self, key: list[Any], clinic_id: str) -> str:
        """``key`` as JSON, encrypted and authenticated for ``clinic_id``, in URL-safe base64."""
        nonce = os.urandom(NONCE_BYTES)
        return _b64(nonce + self._aead.encrypt(nonce, orjson.dumps(key), _aad(clinic_id)))

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
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise BadCursor("not a cursor this service issued") from None
