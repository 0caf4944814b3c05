"""``alliance-risk apikey``: a created key works against a real app in api_key mode, with its
clinic and scopes; the key is printed once and never stored; a bad keys file is left alone."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli.main import app
from service.app import create_app
from service.auth import AuthSettings, hash_api_key, load_api_keys
from service.settings import ServiceSettings
from tests.service.conftest import MODEL_NAME, TEST_CLINIC, Registry, security_settings
from tests.service.helpers import request_for

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def apikey(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["apikey", *map(str, args)], env=WIDE)
    return result.exit_code, result.stdout, result.stderr


def create(keys: Path, clinic: str, *scopes: str, name: str | None = None) -> str:
    args: list[str | Path] = ["create", "--keys-file", keys, "--clinic", clinic]
    for scope in scopes:
        args += ["--scope", scope]
    if name is not None:
        args += ["--name", name]
    code, out, err = apikey(*args)
    assert code == 0, err
    key = out.strip()
    assert out == key + "\n"  # the key alone on stdout, for KEY=$(...)
    assert key not in err and key not in keys.read_text()
    return key


@contextmanager
def api_key_app(registry: Registry, keys: Path, dev_key_dir: Path) -> Iterator[TestClient]:
    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri, poll_interval_s=0
    )
    security = security_settings(dev_key_dir, registry.root / "audit")
    security["auth"] = AuthSettings(mode="api_key", api_keys_file=keys)
    with TestClient(create_app(settings, configure_logs=False, **security)) as client:
        yield client


def test_created_keys_are_accepted_with_their_clinic_and_scopes(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    keys = tmp_path / "secrets" / "api-keys.json"
    reader = create(keys, TEST_CLINIC, "risk:read", "model:read", name="front-1")
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    model_only = create(keys, TEST_CLINIC, "model:read")  # appended, default name
    elsewhere = create(keys, "clinic-other", "risk:read", name="other-1")
    stored = load_api_keys(keys)
    assert [r.key_id for r in stored][0::2] == ["front-1", "other-1"]
    assert stored[1].key_id.startswith("key-")
    assert stored[0].key_hash == hash_api_key(reader)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600

    body = request_for(registry.cohort, str(registry.cohort.clients["client_id"].iloc[0]))
    with api_key_app(registry, keys, dev_key_dir) as client:
        ok = client.post("/v1/risk", json=body, headers={"X-API-Key": reader})
        assert ok.status_code == 200, ok.text
        assert 0.0 <= ok.json()["probability"] <= 1.0
        assert client.get("/v1/model", headers={"X-API-Key": model_only}).status_code == 200
        # Right key, missing scope: 403. Another clinic's key: the client does not exist.
        assert (
            client.post("/v1/risk", json=body, headers={"X-API-Key": model_only}).status_code == 403
        )
        other = client.post("/v1/risk", json=body, headers={"X-API-Key": elsewhere})
        assert other.status_code == 404, other.text
        bogus = reader[:-2] + ("AA" if not reader.endswith("AA") else "BB")
        assert client.get("/v1/model", headers={"X-API-Key": bogus}).status_code == 401


def test_list_shows_ids_clinics_and_scopes_but_no_hashes(tmp_path: Path) -> None:
    keys = tmp_path / "api-keys.json"
    create(keys, "north", "risk:read", "risk:batch", name="front-1")
    code, out, _ = apikey("list", "--keys-file", keys)
    assert code == 0
    assert "front-1" in out and "north" in out and "risk:batch risk:read" in out
    assert "sha256" not in out


def test_a_repeated_name_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    keys = tmp_path / "api-keys.json"
    create(keys, "north", "risk:read", name="front-1")
    before = keys.read_bytes()
    code, out, err = apikey(
        "create", "--keys-file", keys, "--clinic", "north", "--scope", "risk:read",
        "--name", "front-1",
    )  # fmt: skip
    assert code == 1 and out == ""
    assert "already holds a key named 'front-1'" in err
    assert keys.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"keys": [{"id": "a", "hash": "sha256:abc", "clinic": "north", "scopes": ["risk:read"]}]}',
        '{"keys": [], "extra": 1}',
    ],
)
def test_a_malformed_keys_file_is_refused_and_left_alone(tmp_path: Path, content: str) -> None:
    keys = tmp_path / "api-keys.json"
    keys.write_text(content)
    code, out, err = apikey(
        "create", "--keys-file", keys, "--clinic", "north", "--scope", "risk:read"
    )
    assert code == 2 and out == ""
    assert "the keys file cannot be used, nothing was changed" in err
    assert keys.read_text() == content
    assert list(tmp_path.iterdir()) == [keys]  # no temporary file left behind


PRINTABLE_RULE = "printable characters (no control characters or line separators)"


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--scope", "risk:write", "--scope: unknown scope(s) ['risk:write']"),
        ("--scope", "risk:\x01", "--scope: unknown scope(s) (not shown)"),
        ("--clinic", "north\x1b[2J", f"--clinic must be 1 to 256 {PRINTABLE_RULE}"),
        ("--clinic", "", f"--clinic must be 1 to 256 {PRINTABLE_RULE}"),
        ("--name", "front\x01desk", f"--name must be 1 to 128 {PRINTABLE_RULE}"),
        ("--name", "front\u2028desk", f"--name must be 1 to 128 {PRINTABLE_RULE}"),
        ("--name", "n" * 129, f"--name must be 1 to 128 {PRINTABLE_RULE}"),
        ("--name", "", f"--name must be 1 to 128 {PRINTABLE_RULE}"),
    ],
    ids=[
        "scope-unknown",
        "scope-control",
        "clinic-escape",
        "clinic-empty",
        "name-control",
        "name-line-separator",
        "name-long",
        "name-empty",
    ],
)
@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_invalid_values_are_refused_by_option_before_anything_is_written(
    tmp_path: Path, option: str, value: str, reason: str, existing: bool
) -> None:
    keys = tmp_path / "api-keys.json"
    if existing:
        create(keys, "north", "risk:read", name="front-1")
    before = keys.read_bytes() if existing else None
    args = {"--clinic": "north", "--scope": "risk:read", option: value}
    code, out, err = apikey("create", "--keys-file", keys, *(x for kv in args.items() for x in kv))
    assert code == 1 and out == ""
    assert reason in err and "nothing was changed" in err
    assert ".tmp" not in err and "keys.0" not in err  # the option, not the file, is named
    if not value.isprintable() or len(value) > 128:
        assert value not in err  # neither a control character nor the long value comes back
    if existing:
        assert keys.read_bytes() == before and list(tmp_path.iterdir()) == [keys]
    else:
        assert not keys.exists() and list(tmp_path.iterdir()) == []


def test_the_keys_file_comes_from_the_service_s_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "from-env.json"
    result = runner.invoke(
        app,
        ["apikey", "create", "--clinic", "north", "--scope", "risk:read"],
        env={"ALLIANCE_RISK_AUTH_API_KEYS_FILE": str(keys)},
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(keys.read_text())["keys"][0]["clinic"] == "north"
    missing = runner.invoke(
        app,
        ["apikey", "create", "--clinic", "north", "--scope", "risk:read"],
        env={"ALLIANCE_RISK_AUTH_API_KEYS_FILE": None},
    )
    assert missing.exit_code == 2
    assert (
        "no keys file: pass --keys-file or set ALLIANCE_RISK_AUTH_API_KEYS_FILE" in missing.stderr
    )


@pytest.mark.parametrize("command", ["create", "list"])
def test_a_folder_as_keys_file_is_a_one_line_error(tmp_path: Path, command: str) -> None:
    args = ["--clinic", "north", "--scope", "risk:read"] if command == "create" else []
    code, out, err = apikey(command, "--keys-file", tmp_path, *args)
    assert code == 2 and out == ""
    assert err.startswith("Error: the keys file cannot be used") and "Is a directory" in err
    assert "Usage:" not in err and list(tmp_path.iterdir()) == []
