"""Audit client refs are keyed pseudonyms of (clinic, client): one clinic's ``C0001`` never shares
another's ref, the same client gets the same ref on every edge, and the unscoped form of older
records stays computable for auditors."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer
from typer.testing import CliRunner

from cli.main import app
from service.audit import ClientRefs, client_ref, correlation_ref, load_or_create_key, unscoped_ref
from service.audit_log import AuditSettings
from service.auth import Principal
from service.dashboard import session as sessions
from service.store import deps
from tests.service.conftest import TEST_CLINIC, Registry, bearer
from tests.service.test_clients_api import a_client, post_sessions, store_app
from tests.service.test_dashboard_app import _sign_in, _token, dash  # noqa: F401 (shared fixture)

KEY = bytes(range(32))
OTHER_CLINIC = "clinic-other"
HEX = set("0123456789abcdef")


def test_the_same_client_id_in_two_clinics_gets_two_refs() -> None:
    a, b = client_ref("clinic-a", "C0001", KEY), client_ref("clinic-b", "C0001", KEY)
    assert a != b
    for ref in (a, b):
        assert len(ref) == 64 and set(ref) <= HEX
        assert "C0001" not in ref and "clinic" not in ref
    # Neither is the unscoped form older records hold.
    assert unscoped_ref("C0001", KEY) not in (a, b)


@settings(max_examples=200, deadline=None)
@given(clinic=st.text(max_size=12), client=st.text(max_size=12),
       other_clinic=st.text(max_size=12), other_client=st.text(max_size=12))  # fmt: skip
def test_refs_are_equal_exactly_when_the_pairs_are(
    clinic: str, client: str, other_clinic: str, other_client: str
) -> None:
    """The clinic is length-prefixed: ("ab", "c") and ("a", "bc") are two clients."""
    refs = ClientRefs(KEY)
    ref = client_ref(clinic, client, KEY)
    assert ref == refs.client_ref(clinic, client) == refs.client_refs(clinic, [client])[0]
    same = (clinic, client) == (other_clinic, other_client)
    assert (ref == client_ref(other_clinic, other_client, KEY)) is same
    # No client ref equals a correlation ref, an unscoped ref or a derived key.
    value = clinic + client
    assert ref not in {correlation_ref(value, KEY), unscoped_ref(value, KEY), refs.derive(value)}
    assert ref != client_ref(clinic, client, bytes(range(1, 33)))


def test_the_split_between_clinic_and_client_matters() -> None:
    assert client_ref("ab", "c", KEY) != client_ref("a", "bc", KEY)
    assert client_ref("", "ac", KEY) != client_ref("a", "c", KEY)


def test_unscoped_ref_is_the_form_of_older_records() -> None:
    """What records written before the scoping hold: the HMAC of the id alone."""
    legacy = hmac.new(KEY, b"C0001", hashlib.sha256).hexdigest()
    assert unscoped_ref("C0001", KEY) == legacy
    assert correlation_ref("C0001", KEY) != legacy != ClientRefs(KEY).derive("C0001")


def test_many_refs_of_one_clinic_equal_one_by_one() -> None:
    refs = ClientRefs(KEY)
    ids = [f"c-{i}" for i in range(20)]
    assert refs.client_refs("clinic-a", ids) == [client_ref("clinic-a", c, KEY) for c in ids]
    assert refs.correlation_ref("trace-1") == correlation_ref("trace-1", KEY)


# -- through the service ----------------------------------------------------------------------


def _records(registry: Registry, action: str) -> list[dict[str, Any]]:
    text = (registry.root / "audit" / "audit.jsonl").read_text()
    return [r for r in map(json.loads, text.splitlines()) if r["action"] == action]


def _key(registry: Registry) -> bytes:
    return AuditSettings(key_file=registry.root / "audit" / "audit.key").load_key()


def test_the_same_client_gets_the_same_ref_on_every_edge_and_another_clinics_a_different_one(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    body = a_client(registry)
    client_id = body["client_id"]
    other = {**body, "clinic_id": OTHER_CLINIC}
    theirs = bearer(dev_key_dir, clinic=OTHER_CLINIC)
    with store_app(registry, dev_key_dir, f"sqlite:///{tmp_path / 'store.db'}") as api:
        assert api.post("/v1/risk", json=body).status_code == 200
        assert post_sessions(api, body, body["sessions"], first=True).status_code == 200
        assert api.post("/v1/risk", json=other, headers=theirs).status_code == 200
        # A probe at the other clinic's client is recorded under that client's ref.
        assert api.post("/v1/risk", json=other).status_code == 404
    reads = _records(registry, "risk.read")
    [write] = _records(registry, "clients.sessions_write")
    assert [(r["clinic"], r["status"]) for r in reads] == [
        (TEST_CLINIC, 200),
        (OTHER_CLINIC, 200),
        (TEST_CLINIC, 404),
    ]
    assert reads[0]["client_ref"] == write["client_ref"] != reads[1]["client_ref"]
    assert reads[2]["client_ref"] == reads[1]["client_ref"]
    key = _key(registry)
    ours, their = client_ref(TEST_CLINIC, client_id, key), client_ref(OTHER_CLINIC, client_id, key)
    assert [(r["clinic"], r["status"], r["client_ref"]) for r in reads] == [
        (TEST_CLINIC, 200, ours),
        (OTHER_CLINIC, 200, their),
        (TEST_CLINIC, 404, their),
    ]
    assert write["client_ref"] == ours != their
    # What an auditor runs to find the client's lines.
    env = {"ALLIANCE_RISK_AUDIT_KEY_FILE": str(registry.root / "audit" / "audit.key")}
    assert _cli("--clinic", TEST_CLINIC, client_id, env=env).stdout == ours + "\n"
    text = (registry.root / "audit" / "audit.jsonl").read_text()
    assert client_id not in text and unscoped_ref(client_id, key) not in text


@pytest.mark.parametrize("clinics", [(TEST_CLINIC, TEST_CLINIC), (TEST_CLINIC, OTHER_CLINIC)])
def test_batch_items_are_scoped_by_their_clinic(
    registry: Registry, dev_key_dir: Path, tmp_path: Path, clinics: tuple[str, str]
) -> None:
    body = a_client(registry)
    items = [{**body, "clinic_id": clinic} for clinic in clinics]
    with store_app(registry, dev_key_dir, f"sqlite:///{tmp_path / 'store.db'}") as api:
        api.headers.update(bearer(dev_key_dir, scopes=("risk:batch",)))
        assert api.post("/v1/risk/batch", json={"clients": items}).status_code == 200
    key = _key(registry)
    got = {(r["status"], r["client_ref"]) for r in _records(registry, "risk.batch")}
    expected = {200: client_ref(TEST_CLINIC, body["client_id"], key),
                404: client_ref(OTHER_CLINIC, body["client_id"], key)}  # fmt: skip
    assert got == {(200 if c == TEST_CLINIC else 404, expected[200 if c == TEST_CLINIC else 404])
                   for c in clinics}  # fmt: skip


# -- the auditor's command --------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str], stdin: str | None = None) -> Result:
    merged: dict[str, str | None] = {"ALLIANCE_RISK_AUDIT_KEY": None, "COLUMNS": "200", **env}
    return CliRunner().invoke(app, ["audit", "ref", *args], env=merged, input=stdin)


def test_audit_ref_prints_the_scoped_ref_and_the_older_forms(tmp_path: Path) -> None:
    key_file = tmp_path / "audit.key"
    key = load_or_create_key(key_file)
    env = {"ALLIANCE_RISK_AUDIT_KEY_FILE": str(key_file)}
    scoped = _cli("--clinic", "clinic-a", "C0001", env=env)
    assert scoped.exit_code == 0, scoped.stderr
    assert scoped.stdout == client_ref("clinic-a", "C0001", key) + "\n"
    other = _cli("--clinic", "clinic-b", "C0001", env=env).stdout
    assert other == client_ref("clinic-b", "C0001", key) + "\n" != scoped.stdout
    assert _cli("--unscoped", "C0001", env=env).stdout == unscoped_ref("C0001", key) + "\n"
    assert _cli("--correlation", "t-1", env=env).stdout == correlation_ref("t-1", key) + "\n"
    many = _cli("--clinic", "clinic-a", "-", env=env, stdin="C0001\nC0002\n")
    assert many.stdout.split() == [client_ref("clinic-a", c, key) for c in ("C0001", "C0002")]
    assert "C0001" not in scoped.stderr + many.stdout + many.stderr


def test_audit_ref_needs_one_form_and_an_existing_key(tmp_path: Path) -> None:
    missing = tmp_path / "none.key"
    env = {"ALLIANCE_RISK_AUDIT_KEY_FILE": str(missing)}
    for args in (["C0001"], ["--clinic", "a", "--unscoped", "C0001"]):
        refused = _cli(*args, env=env)
        assert refused.exit_code == 2 and "exactly one of" in refused.stderr
    no_key = _cli("--clinic", "a", "C0001", env=env)
    assert no_key.exit_code == 2 and "no audit key" in no_key.stderr
    assert not missing.exists() and "C0001" not in no_key.stderr
    helped = CliRunner().invoke(app, ["audit", "ref", "--help"], env={"COLUMNS": "200"})
    assert "--clinic" in helped.stdout and "clinic-local" in helped.stdout
    assert "--unscoped" in helped.stdout


# -- derived keys -----------------------------------------------------------------------------


def test_no_client_id_turns_a_derived_key_into_an_audit_ref(
    dash: TestClient,  # noqa: F811
    dev_key_dir: Path,
) -> None:
    """The dashboard's cookie-signing key is the HMAC of a fixed label under the audit key, the
    form client refs had before the scoping: a client id equal to the label wrote the signing key
    into the audit file, and whoever read the file could forge a session."""
    label = sessions._KEY_LABEL
    assert _sign_in(dash, _token(dev_key_dir)).status_code == 303
    answer = dash.get("/dashboard/clients/" + quote(label, safe=""))
    assert answer.status_code == 404
    refs = dash.app.state.security.refs  # type: ignore[attr-defined]
    text = dash.audit.read_text()  # type: ignore[attr-defined]
    [record] = [r for r in map(json.loads, text.splitlines()) if r["action"] == "dashboard.client"]
    assert record["client_ref"] == refs.client_ref(TEST_CLINIC, label)
    assert refs.derive(label) not in text


#: HMAC-SHA256 under KEY of each derivation label alone: the dashboard's signing key and the
#: cursor key before derive() had a domain of its own (up to 7a97c8e), equal to the unscoped
#: client_ref of a client id equal to the label, which an old audit file can hold.
PRE_UPGRADE_SIGNING_KEY = "4e42f0074e22a0c265334159837641149d82a002a27bc584e5511a8750264fb8"
PRE_UPGRADE_CURSOR_KEY = "33c6eb908763541951efda9502bd38cf882f46b6fb55155405af99fb6db791f9"


@settings(max_examples=200, deadline=None)
@given(label=st.text(max_size=24), cut=st.integers(0, 24))
def test_a_derived_key_is_no_ref_of_any_form(label: str, cut: int) -> None:
    """No id, X-Request-ID or (clinic, client) pair a caller sends makes a record's ref equal a
    key derived from the same text."""
    refs = ClientRefs(KEY)
    derived = refs.derive(label)
    clinic, client = label[:cut], label[cut:]
    assert derived not in {
        unscoped_ref(label, KEY),
        correlation_ref(label, KEY),
        refs.correlation_ref(label),
        client_ref(clinic, client, KEY),
        refs.client_ref(clinic, client),
    }
    assert len(derived) == 64 and set(derived) <= HEX


def test_the_upgrade_retires_the_keys_an_old_audit_file_can_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An old file's line holding the pre-upgrade signing key forges no session now, and the
    page cursors are no longer sealed under the pre-upgrade cursor key."""
    refs = ClientRefs(KEY)
    for label, old in ((sessions._KEY_LABEL, PRE_UPGRADE_SIGNING_KEY),
                       (deps._CURSOR_KEY_LABEL, PRE_UPGRADE_CURSOR_KEY)):  # fmt: skip
        assert unscoped_ref(label, KEY) == old != refs.derive(label)
    principal = Principal("user-1", "clinic-a", frozenset({"clients:read"}), "jti-1", "dev", "iss")
    old_signer = URLSafeTimedSerializer(PRE_UPGRADE_SIGNING_KEY, salt=sessions._SALT)
    forged = sessions.dump(sessions.new_session(principal), old_signer)
    assert sessions.load(forged, old_signer) is not None
    assert sessions.load(forged, sessions.signer(refs)) is None
    # The key the seal is built from (the seal's own API is another test file's concern).
    keys: list[bytes] = []
    monkeypatch.setattr(deps, "CursorSeal", keys.append)
    deps.cursor_seal(refs)
    assert keys == [bytes.fromhex(refs.derive(deps._CURSOR_KEY_LABEL))]
    assert keys[0] != bytes.fromhex(PRE_UPGRADE_CURSOR_KEY)


# -- CDS Hooks --------------------------------------------------------------------------------


def test_a_cds_hook_call_is_recorded_under_the_issuers_clinic(
    registry: Registry, tmp_path: Path
) -> None:
    """What docs/cds-hooks.md says: the ref is of (the clinic the EHR issuer is registered for,
    context.patientId), whatever the answer, also for a patient the issuer's organization map
    gives to another clinic (404)."""
    from tests.service.test_cds_support import (
        PATIENT_VIEW,
        auth_header,
        cds_app,
        cds_token,
        client_resources,
        ehr_key,
        hook_body,
    )

    key = ehr_key()
    cid = str(registry.cohort.clients["client_id"].iloc[0])

    def call(cds: TestClient, body: dict[str, Any]) -> int:
        headers = auth_header(cds_token(key, PATIENT_VIEW))
        return cds.post(f"/cds-services/{PATIENT_VIEW}", json=body, headers=headers).status_code

    def body_of(cds: TestClient) -> dict[str, Any]:
        profile = cds.app.state.store.current.scorer.profile  # type: ignore[attr-defined]
        return hook_body(client_resources(registry, cid, profile))

    def hooks(root: Path) -> list[tuple[int, str, bool]]:
        ref = client_ref(TEST_CLINIC, cid, AuditSettings(key_file=root / "audit.key").load_key())
        lines = [json.loads(x) for x in (root / "audit.jsonl").read_text().splitlines()]
        return [(x["status"], x["clinic"], x["client_ref"] == ref)
                for x in lines if x["action"] == "cds.hook"]  # fmt: skip

    with TestClient(cds_app(registry, tmp_path / "a", key)) as cds:
        body = body_of(cds)
        assert call(cds, body) == 200
        del body["prefetch"]["patient"]
        assert call(cds, body) == 412
    mapped = {TEST_CLINIC: OTHER_CLINIC}  # the patient's organization belongs to another clinic
    with TestClient(cds_app(registry, tmp_path / "b", key, organizations=mapped)) as cds:
        assert call(cds, body_of(cds)) == 404
    assert hooks(tmp_path / "a") == [(200, TEST_CLINIC, True), (412, TEST_CLINIC, True)]
    assert hooks(tmp_path / "b") == [(404, TEST_CLINIC, True)]
