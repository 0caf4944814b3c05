"""CDS Hooks authentication (CDS Hooks 2.0 "Trusting CDS Clients") through the one authenticator:
asymmetric algorithms, the iss allowlist, aud = the endpoint invoked, single-use jti, the clinic
from the issuer's configuration. Every refusal is a 401 that quotes nothing of the token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient

from service.auth import Authenticator, AuthError, AuthSettings, IssuerConfig
from tests.service.auth.helpers import jwks_doc
from tests.service.conftest import TEST_CLINIC, Registry
from tests.service.test_cds_support import (
    EHR,
    KID,
    PATIENT_VIEW,
    PUBLIC_URL,
    auth_header,
    cds_client,
    cds_token,
    ehr_key,
)


@pytest.fixture(scope="module")
def key():
    """The EHR's ES384 signing key (its public half is the issuer's JWKS)."""
    return ehr_key()


AUD = f"{PUBLIC_URL}/cds-services/{PATIENT_VIEW}"


@pytest.fixture
def authn(tmp_path: Path, key) -> Authenticator:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(jwks_doc({KID: key})))
    issuer = IssuerConfig(issuer=EHR, audience="alliance-risk", jwks_file=jwks, clinic=TEST_CLINIC)
    return Authenticator(AuthSettings(mode="jwt", issuers=[issuer]))


def _refused(authn: Authenticator, token: str, match: str) -> None:
    with pytest.raises(AuthError, match=match) as info:
        authn.authenticate(auth_header(token), audience=AUD)
    assert info.value.status == 401
    assert token.split(".")[1] not in f"{info.value.detail} {info.value.www_authenticate}"


def test_a_cds_token_acts_for_the_issuers_clinic(authn, key) -> None:
    principal = authn.authenticate(auth_header(cds_token(key)), audience=AUD)
    assert principal.clinic == TEST_CLINIC
    assert principal.subject == EHR and principal.issuer == EHR
    assert principal.scopes == frozenset()  # the registration is the grant, not a scope


def test_cds_tokens_are_refused_when_they_break_the_rules(authn, key, tmp_path) -> None:
    _refused(authn, cds_token(key, aud=f"{PUBLIC_URL}/cds-services/other"), "audience")
    _refused(authn, cds_token(key, aud="alliance-risk"), "audience")  # the /v1 audience
    _refused(authn, cds_token(key, iss="https://stranger.example/"), "issuer")
    _refused(authn, cds_token(key, jti=None), "jti")
    _refused(authn, cds_token(key, clinic="clinic-other"), "claim")
    stranger = ehr_key()  # right kid, wrong key: the signature fails
    _refused(authn, cds_token(stranger), "signature")
    hs256 = jwt.encode({"iss": EHR, "aud": AUD, "iat": 1, "exp": 2**31, "jti": "x"},
                       "k" * 32, algorithm="HS256", headers={"kid": KID})  # fmt: skip
    _refused(authn, hs256, "algorithm")


def test_a_cds_token_is_single_use(authn, key) -> None:
    token = cds_token(key)
    authn.authenticate(auth_header(token), audience=AUD)
    _refused(authn, token, "already been used")


def test_a_cds_token_never_opens_the_scoring_api(authn, key) -> None:
    with pytest.raises(AuthError, match="audience|lacks the required"):
        authn.authenticate(auth_header(cds_token(key)))


def test_api_key_mode_refuses_cds_calls(tmp_path) -> None:
    from service.auth import hash_api_key

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"id": "k1", "hash": hash_api_key("a" * 40),
                                          "clinic": TEST_CLINIC, "scopes": ["risk:read"]}]}))  # fmt: skip
    authn = Authenticator(AuthSettings(mode="api_key", api_keys_file=keys))
    with pytest.raises(AuthError, match="signed JWT"):
        authn.authenticate({"X-API-Key": "a" * 40}, audience=AUD)


@pytest.fixture
def cds(registry: Registry, tmp_path: Path, key) -> Iterator[TestClient]:
    yield from cds_client(registry, tmp_path / "cds", key)


def test_the_service_answers_401_on_refused_tokens(cds: TestClient, key) -> None:
    url = f"/cds-services/{PATIENT_VIEW}"
    body = {"hook": "patient-view", "hookInstance": "1", "context": {"patientId": "p1"}}
    assert cds.post(url, json=body).status_code == 401  # no token at all
    token = cds_token(key, aud=f"{PUBLIC_URL}/cds-services/elsewhere")
    response = cds.post(url, json=body, headers=auth_header(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    replayed = cds_token(key)
    first = cds.post(url, json=body, headers=auth_header(replayed))
    assert first.status_code != 401
    again = cds.post(url, json=body, headers=auth_header(replayed))
    assert again.status_code == 401
    assert "already been used" in again.json()["detail"]


def test_an_unknown_service_is_404_and_unconfigured_cds_is_503(registry, tmp_path, key) -> None:
    for client in cds_client(registry, tmp_path / "a", key):
        assert client.post("/cds-services/nope", json={}).status_code == 404
    for client in cds_client(registry, tmp_path / "b", key, cds_public_url=None):
        response = client.post(f"/cds-services/{PATIENT_VIEW}", json={},
                               headers=auth_header(cds_token(key)))  # fmt: skip
        assert response.status_code == 503
        assert client.get("/cds-services").status_code == 200


def test_an_issuer_not_registered_as_an_ehr_cannot_call_cds(tmp_path, key) -> None:
    """An identity provider (no ``clinic`` in its IssuerConfig) whose token names a clinic and
    no scope was answered with a card before: CDS calls are for EHR issuers only."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(jwks_doc({KID: key})))
    idp = IssuerConfig(issuer=EHR, audience="alliance-risk", jwks_file=jwks)
    authn = Authenticator(AuthSettings(mode="jwt", issuers=[idp]))
    _refused(authn, cds_token(key, clinic=TEST_CLINIC), "not registered for CDS")


def test_a_cds_token_must_say_typ_jwt(authn, key) -> None:
    """CDS Hooks 2.0: the JWT header's typ is REQUIRED ("JWT", case-insensitive)."""
    _refused(authn, cds_token(key, typ=None), "typ")
    _refused(authn, cds_token(key, typ="at+jwt"), "typ")
    assert authn.authenticate(auth_header(cds_token(key, typ="jwt")), audience=AUD)


def test_a_long_lived_cds_token_is_refused(authn, key, tmp_path) -> None:
    """Each used jti is kept until exp: a day-long token would hold its place for a day."""
    now = int(time.time())
    _refused(authn, cds_token(key, iat=now, exp=now + 86_400), "lifetime")
    assert authn.authenticate(auth_header(cds_token(key, iat=now, exp=now + 300)), audience=AUD)
    jwks = tmp_path / "jwks2.json"
    jwks.write_text(json.dumps(jwks_doc({KID: key})))
    issuer = IssuerConfig(issuer=EHR, audience="a", jwks_file=jwks, clinic=TEST_CLINIC)
    strict = Authenticator(AuthSettings(mode="jwt", issuers=[issuer], cds_max_token_lifetime_s=60))
    _refused(strict, cds_token(key, iat=now, exp=now + 300), "lifetime")
