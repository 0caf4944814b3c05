"""The store's sealed page cursors (service.store.cursors): readable by nobody, bound to one
clinic and one key, refused when changed by one character, the same for the same position."""

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
    cursor = SEAL.seal(key, "clinic-a")
    assert SEAL.open(cursor, "clinic-a") == key
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
            seal.open(bad, clinic)
    assert "key" in repr(SEAL) and "hidden" in repr(SEAL)
    with pytest.raises(ValueError, match="32 bytes"):
        CursorSeal(b"short")


def test_the_same_position_seals_alike_and_others_do_not() -> None:
    # AES-SIV is deterministic: a page's body, and its strong ETag, stay the same.
    assert SEAL.seal(["o", 0, 1, 0.5, 3], "a") == SEAL.seal(["o", 0, 1, 0.5, 3], "a")
    cursors = {SEAL.seal(["o", 0, 1, 0.5, i], "a") for i in range(1, 200)}
    cursors |= {SEAL.seal(["o", 0, 1, 0.5, 3], c) for c in ("b", "a\x00", "")}
    assert len(cursors) == 199 + 3
    # Each carries its own synthetic IV (the first 16 bytes).
    ivs = {base64.urlsafe_b64decode(c + "=" * (-len(c) % 4))[:16] for c in cursors}
    assert len(ivs) == len(cursors)


def test_a_cursor_of_plain_json_does_not_open() -> None:
    clear = base64.urlsafe_b64encode(orjson.dumps(["o", 0, 1, 0.5, 3] * 3)).decode().rstrip("=")
    with pytest.raises(BadCursor):
        SEAL.open(clear, "a")
