"""``service.auth.api_keys``: generating, hashing, storing and verifying API keys, and the
api_key mode of the authenticator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from service import auth
from service.auth import (
    Authenticator,
    AuthError,
    AuthSettings,
    Principal,
    generate_api_key,
    hash_api_key,
    load_api_keys,
    verify_api_key,
)


def _key_file(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp_path / "api-keys.json"
    path.write_text(json.dumps({"keys": entries}))
    return path


def test_api_key_hash_round_trip_and_authentication(tmp_path):
    front, admin = generate_api_key(), generate_api_key()
    assert front != admin and len(front) >= auth.API_KEY_MIN_CHARS
    assert hash_api_key(front) == "sha256:" + hashlib.sha256(front.encode()).hexdigest()
    path = _key_file(
        tmp_path,
        [
            {"id": "front-1", "hash": hash_api_key(front), "clinic": "north",
             "scopes": ["risk:read", "system/RiskAssessment.rs"]},
            {"id": "ops", "hash": hash_api_key(admin), "clinic": "south",
             "scopes": ["model:admin"]},
        ],
    )  # fmt: skip
    assert front not in path.read_text()  # only hashes are stored
    authn = Authenticator(AuthSettings(mode="api_key", api_keys_file=path))
    principal = authn.authenticate({"x-api-key": front})
    assert principal == Principal("apikey:front-1", "north", frozenset({"risk:read"}), "front-1",
                                  "api_key")  # fmt: skip
    assert authn.authenticate({"X-API-Key": admin}).clinic == "south"

    wrong = front[:-1] + ("A" if front[-1] != "A" else "B")
    for headers, match in (
        ({"X-API-Key": wrong}, "API key is not valid"),
        ({"X-API-Key": ""}, "missing API key"),
        ({"Authorization": f"Bearer {front}"}, "missing API key"),
    ):
        with pytest.raises(AuthError, match=match) as info:
            authn.authenticate(headers)
        assert info.value.status == 401
        assert (info.value.www_authenticate or "").startswith('ApiKey realm="alliance-risk"')
        assert front not in str(info.value) and wrong not in str(info.value)
    assert verify_api_key(wrong, load_api_keys(path)) is None


def test_api_keys_must_be_long_and_the_file_valid(tmp_path):
    with pytest.raises(ValueError, match="at least 32 characters"):
        hash_api_key("password123")
    good = hash_api_key(generate_api_key())
    entry = {"id": "a", "hash": good, "clinic": "north", "scopes": ["risk:read"]}
    with pytest.raises(ValueError, match=r"unknown scope\(s\) \['risk:write'\]"):
        load_api_keys(_key_file(tmp_path, [{**entry, "scopes": ["risk:write"]}]))
    with pytest.raises(ValueError, match="distinct id"):
        load_api_keys(_key_file(tmp_path, [entry, {**entry, "hash": hash_api_key("k" * 40)}]))
    with pytest.raises(ValueError, match="distinct hash"):
        load_api_keys(_key_file(tmp_path, [entry, {**entry, "id": "b"}]))
    plaintext = "ark_" + "z" * 40
    with pytest.raises(ValueError, match=r"keys\.0\.hash: string_pattern_mismatch") as info:
        load_api_keys(_key_file(tmp_path, [{**entry, "hash": plaintext}]))
    assert plaintext not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"), [("id", "front\n1"), ("id", "front\x001"), ("clinic", "n" * 257),
                         ("clinic", "north\u2028")],
)  # fmt: skip
def test_key_ids_and_clinics_the_audit_record_would_refuse_are_refused_at_load(
    tmp_path, field, value
):
    entry = {"id": "a", "hash": hash_api_key(generate_api_key()), "clinic": "north",
             "scopes": ["risk:read"], field: value}  # fmt: skip
    with pytest.raises(ValueError, match=rf"keys\.0\.{field}: value_error") as info:
        load_api_keys(_key_file(tmp_path, [entry]))
    assert value not in str(info.value)


def test_a_key_whose_id_the_audit_record_would_refuse_is_a_401_not_a_500(tmp_path):
    key = generate_api_key()
    path = _key_file(tmp_path, [{"id": "ok", "hash": hash_api_key(key), "clinic": "north",
                                 "scopes": ["risk:read"]}])  # fmt: skip
    authn = Authenticator(AuthSettings(mode="api_key", api_keys_file=path))
    # A record that did not come through load_api_keys (the loader refuses it).
    authn._api_keys = (auth.ApiKeyRecord("front\r\n1", hash_api_key(key), "north",
                                         frozenset({"risk:read"})),)  # fmt: skip
    with pytest.raises(AuthError, match="API key is not valid") as info:
        authn.authenticate({"X-API-Key": key})
    assert info.value.status == 401
    assert 'error="invalid_token"' in (info.value.www_authenticate or "")
