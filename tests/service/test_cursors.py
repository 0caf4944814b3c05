"""The store's sealed page cursors (service.store.cursors): readable by nobody, bound to one
clinic, one purpose and one key, refused when changed by one character, the same for the same
position; the key's fingerprint names it without giving it away."""

from __future__ import annotations

import base64

import orjson
import pytest

from service.store.cursors import BadCursor, CursorSeal, sealed_length

SEAL = CursorSeal(bytes(range(32)))


def _flipped(cursor: str, i: int) -> list[str]:
    return [cursor[:i] + c + cursor[i + 1 :] for c in "AB-_+/=" if c != cursor[i]]


def test_a_sealed_cursor_opens_for_its_clinic_and_key_only() -> None:
    key = ["o", 2, 1, "t-private", 7]
    cursor = SEAL.seal(key, "clinic-a", "caseload")
    assert SEAL.open(cursor, "clinic-a", "caseload") == key
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert b"t-private" not in raw and b"7]" not in raw
    assert len(cursor) == sealed_length(len(b'["o",2,1,"t-private",7]'))
    for bad, clinic, seal in [
        (cursor, "clinic-b", SEAL),
        (cursor, "clinic-a", CursorSeal(bytes(32))),
        (cursor[:-1], "clinic-a", SEAL),
        (cursor[:-4], "clinic-a", SEAL),
        (cursor[:16], "clinic-a", SEAL),
        (cursor + "A", "clinic-a", SEAL),
        (cursor + "==", "clinic-a", SEAL),
        ("", "clinic-a", SEAL),
        ("%%%", "clinic-a", SEAL),
        ("é", "clinic-a", SEAL),
        *((f, "clinic-a", SEAL) for i in range(len(cursor)) for f in _flipped(cursor, i)),
    ]:
        with pytest.raises(BadCursor, match="^not a cursor this service issued$"):
            seal.open(bad, clinic, "caseload")
    assert "key" in repr(SEAL) and "hidden" in repr(SEAL)
    with pytest.raises(ValueError, match="32 bytes"):
        CursorSeal(b"short")


def test_the_same_position_seals_alike_and_others_do_not() -> None:
    # AES-SIV is deterministic: a page's body, and its strong ETag, stay the same.
    assert SEAL.seal(["o", 0, 1, 0.5, 3], "a", "caseload") == SEAL.seal(
        ["o", 0, 1, 0.5, 3], "a", "caseload"
    )
    cursors = {SEAL.seal(["o", 0, 1, 0.5, i], "a", "caseload") for i in range(1, 200)}
    cursors |= {SEAL.seal(["o", 0, 1, 0.5, 3], c, "caseload") for c in ("b", "a\x00", "")}
    assert len(cursors) == 199 + 3
    # Each carries its own synthetic IV (the first 16 bytes).
    ivs = {base64.urlsafe_b64decode(c + "=" * (-len(c) % 4))[:16] for c in cursors}
    assert len(ivs) == len(cursors)


def test_a_cursor_of_plain_json_does_not_open() -> None:
    clear = base64.urlsafe_b64encode(orjson.dumps(["o", 0, 1, 0.5, 3] * 3)).decode().rstrip("=")
    with pytest.raises(BadCursor):
        SEAL.open(clear, "a", "caseload")


def test_a_cursor_opens_for_its_own_purpose_only() -> None:
    # Whatever the payload says: a risk history's cursor never opens as a caseload's, even one
    # whose payload is a caseload position, and the other way round.
    position = ["o", 0, 1, 0.5, 3]
    history = SEAL.seal(position, "clinic-a", "history")
    caseload = SEAL.seal(["h", 3], "clinic-a", "caseload")
    assert SEAL.open(history, "clinic-a", "history") == position
    assert history != SEAL.seal(position, "clinic-a", "caseload")
    with pytest.raises(BadCursor, match="^not a cursor this service issued$"):
        SEAL.open(history, "clinic-a", "caseload")
    with pytest.raises(BadCursor, match="^not a cursor this service issued$"):
        SEAL.open(caseload, "clinic-a", "history")


def test_the_fingerprint_names_the_key_and_gives_nothing_of_it() -> None:
    key = bytes(range(32))
    fingerprint = CursorSeal(key).fingerprint
    assert fingerprint == CursorSeal(key).fingerprint
    assert fingerprint != CursorSeal(bytes(32)).fingerprint
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert fingerprint not in (key.hex(), key[:8].hex())
    assert fingerprint not in repr(CursorSeal(key))
