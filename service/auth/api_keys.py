"""The API-key file format: generating keys, hashing them for storage, loading the hashed key
file and matching a presented key in constant time.

Keys are stored only as ``sha256:<hex>`` hashes, each bound to one clinic and a set of scopes.
``load_api_keys`` reads a file (at start-up); the rest does no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.audit import is_audit_text
from service.auth.principal import check_scope_names

#: 32 characters of ``secrets.token_urlsafe`` carry 192 bits; shorter keys are refused.
API_KEY_MIN_CHARS = 32
_API_KEY_MAX_CHARS = 512
_API_KEY_HASH_PREFIX = "sha256:"


def generate_api_key() -> str:
    """A new API key: ``ark_`` and 43 URL-safe characters (32 random bytes, 256 bits)."""
    return "ark_" + secrets.token_urlsafe(32)


def _sha256(key: str) -> str:
    return _API_KEY_HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def hash_api_key(key: str) -> str:
    """``sha256:<hex>`` of ``key``, the only form in which keys are stored.

    A fast hash is enough because keys are random, not chosen by people: slow hashes (bcrypt,
    argon2) exist to slow offline guessing of low-entropy passwords, but guessing one of 2**192
    or more equally likely keys is out of reach at any hash rate, and a slow hash would cost
    ~100 ms of CPU on every request (a denial-of-service lever). Hence the minimum length of
    ``API_KEY_MIN_CHARS`` characters; use ``generate_api_key``.
    """
    if len(key) < API_KEY_MIN_CHARS:
        raise ValueError(
            f"API keys must be at least {API_KEY_MIN_CHARS} characters of random data; "
            "use generate_api_key()"
        )
    return _sha256(key)


@dataclass(frozen=True)
class ApiKeyRecord:
    """One stored key: its public id, its hash, the clinic and scopes it grants."""

    key_id: str
    key_hash: str
    clinic: str
    scopes: frozenset[str]


class _ApiKeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    clinic: str = Field(min_length=1)
    scopes: list[str] = Field(min_length=1)

    @field_validator("id", "clinic")
    @classmethod
    def _audit_text(cls, value: str) -> str:
        # The key id and clinic go into every audit record of the key's requests.
        if not is_audit_text(value):
            raise ValueError("must be printable text (no control characters)")
        return value


class _ApiKeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[_ApiKeyEntry]


def load_api_keys(path: Path) -> tuple[ApiKeyRecord, ...]:
    """Read the hashed key file.

    Format::

        {"keys": [{"id": "frontdesk-1", "hash": "sha256:<64 hex>", "clinic": "north",
                   "scopes": ["risk:read", "risk:batch"]}]}

    Raises ``ValueError`` naming the entry and field of any problem (never a hash value), for
    unknown scopes, and for repeated ids or hashes.
    """
    try:
        parsed = _ApiKeyFile.model_validate_json(Path(path).read_bytes())
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(str(p) for p in err["loc"]) + ": " + err["type"] if err["loc"] else err["type"]
            for err in exc.errors()
        )
        raise ValueError(f"API key file {path} is invalid: {problems}") from None
    records = []
    for i, entry in enumerate(parsed.keys):
        try:
            scopes = check_scope_names(entry.scopes)
        except ValueError as exc:
            raise ValueError(f"API key file {path}: keys.{i}.scopes: {exc}") from None
        records.append(ApiKeyRecord(entry.id, entry.hash, entry.clinic, scopes))
    for attr, label in (("key_id", "id"), ("key_hash", "hash")):
        values = [getattr(r, attr) for r in records]
        if len(values) != len(set(values)):
            raise ValueError(f"API key file {path}: every key needs a distinct {label}")
    return tuple(records)


def verify_api_key(presented: str, records: Iterable[ApiKeyRecord]) -> ApiKeyRecord | None:
    """The record whose hash matches ``presented``, or None.

    Every record is compared with ``hmac.compare_digest`` and the loop never stops early, so
    the time taken does not depend on which key (if any) matched.
    """
    if not presented or len(presented) > _API_KEY_MAX_CHARS:
        return None
    digest = _sha256(presented)
    match = None
    for record in records:
        if hmac.compare_digest(digest, record.key_hash):
            match = record
    return match
