"""The store's cursor encodings (service.store.cursors): the clear form and the sealed one."""

from __future__ import annotations

import base64

import pytest

from service.store.cursors import BadCursor, CursorSeal, pack, sealed_length, unpack

SEAL = CursorSeal(bytes(range(32)))


def test_pack_round_trips_and_refuses_what_it_did_not_write() -> None:
    assert unpack(pack(["h", 42])) == ["h", 42]
    assert "=" not in pack(["h", 1])
    for bad in ("", "%%%", "é", "bm90IGpzb24"):  # the last: "not json"
        with pytest.raises(BadCursor, match="^not a cursor this service issued$"):
            unpack(bad)


def test_a_sealed_cursor_opens_for_its_clinic_and_key_only() -> None:
    key = ["o", 2, 1, "t-private", 7]
    cursor = SEAL.seal(key, "clinic-a")
    assert SEAL.open(cursor, "clinic-a") == key
    assert b"t-private" not in base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert SEAL.seal(key, "clinic-a") != cursor  # a fresh nonce each time
    assert len(cursor) == sealed_length(len(b'["o",2,1,"t-private",7]'))
    flipped = [cursor[:i] + ("A" if cursor[i] != "A" else "B") + cursor[i + 1 :]
               for i in (0, 15, len(cursor) - 2)]  # fmt: skip
    for bad, clinic, seal in [
        (cursor, "clinic-b", SEAL),
        (cursor, "clinic-a", CursorSeal(bytes(32))),
        (cursor[:-4], "clinic-a", SEAL),
        (cursor[:16], "clinic-a", SEAL),
        ("", "clinic-a", SEAL),
        *((f, "clinic-a", SEAL) for f in flipped),
    ]:
        with pytest.raises(BadCursor, match="^not a cursor this service issued$"):
            seal.open(bad, clinic)
    assert "key" in repr(SEAL) and "hidden" in repr(SEAL)
    with pytest.raises(ValueError, match="32 bytes"):
        CursorSeal(b"short")
