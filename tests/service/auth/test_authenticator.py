"""``service.auth.authenticator``: JWT verification against real RSA/EC keys from a JWKS file:
accepted and refused tokens, the verified-token cache, refusal logs, scopes read from tokens
and ``require_scope``, single-use tokens and the clinic claim."""

from __future__ import annotations

import base64
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service import auth
from service.auth import (
    Authenticator,
    AuthError,
    AuthSettings,
    IssuerConfig,
    Principal,
    require_scope,
)
from tests.service.auth.helpers import (
    AUD,
    DROP,
    ISS,
    Clock,
    b64,
    bearer,
    handmade,
    make_claims,
    make_token,
    refused,
)

# -- accepted tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kid", "alg"),
    [("rsa-1", "RS256"), ("rsa-1", "RS384"), ("ec-1", "ES256"), ("ec384-1", "ES384")],
)
def test_valid_asymmetric_tokens_are_accepted(authn, keys, kid, alg):
    token = make_token(keys, kid, alg, jti="abc-123")
    principal = authn.authenticate(bearer(token))
    assert principal == Principal(
        subject="clinician-7",
        clinic="north",
        scopes=frozenset({"risk:read", "risk:batch"}),
        token_id="abc-123",
        method="jwt",
    )


def test_header_lookup_is_case_insensitive_and_scheme_too(authn, keys):
    token = make_token(keys)
    assert authn.authenticate({"authorization": f"bearer {token}"}).clinic == "north"


def test_token_without_jti_gets_a_stable_id_that_is_not_the_token(authn, keys):
    token = make_token(keys, jti=DROP)
    first = authn.authenticate(bearer(token)).token_id
    assert first == authn.authenticate(bearer(token)).token_id
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 16
    assert first[7:] not in token
    assert authn.authenticate(bearer(make_token(keys, jti=DROP, sub="x"))).token_id != first


def test_clock_skew_within_leeway_is_tolerated(authn, keys):
    now = int(time.time())
    assert authn.authenticate(bearer(make_token(keys, exp=now - 10)))
    assert authn.authenticate(bearer(make_token(keys, nbf=now + 10, iat=now + 10)))


# -- refused tokens -----------------------------------------------------------------------------


def test_alg_none_is_rejected(authn, keys):
    token = handmade({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, make_claims(), None)
    refused(authn, token, "algorithm is not accepted")


def test_hs256_with_a_shared_secret_is_rejected(authn, keys):
    token = handmade({"alg": "HS256", "kid": "rsa-1"}, make_claims(), b"s" * 32)
    refused(authn, token, "algorithm is not accepted")


def test_key_confusion_hs256_signed_with_the_rsa_public_pem_is_rejected(authn, keys):
    # The classic attack: a verifier that lets the token choose HS256 would use the public PEM
    # (which everyone has) as the HMAC secret and accept this forgery.
    pem = (
        keys["rsa-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for alg in ("HS256", "HS384", "HS512"):
        digest = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}[alg]
        header = {"alg": alg, "typ": "JWT", "kid": "rsa-1"}
        signing_input = (
            f"{b64(json.dumps(header).encode())}.{b64(json.dumps(make_claims()).encode())}"
        )
        forged = f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), digest).digest())}"
        refused(authn, forged, "algorithm is not accepted")


def test_algorithm_must_match_the_selected_key(authn, keys):
    # Signed by the EC key but pointing at the RSA key's kid.
    token = jwt.encode(make_claims(), keys["ec-1"], algorithm="ES256", headers={"kid": "rsa-1"})
    refused(authn, token, "does not match its key")


def test_tampered_claims_fail_the_signature(authn, keys):
    header, payload, signature = make_token(keys).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["clinic"] = "south"  # an attempt to read another clinic
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    refused(authn, forged, "signature is invalid")


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        ({"aud": "someone-else"}, "audience is not accepted"),
        ({"exp": int(time.time()) - 120}, "has expired"),
        ({"nbf": int(time.time()) + 600}, "not yet valid"),
        ({"iat": int(time.time()) + 600}, "not yet valid"),
        ({"iat": DROP}, "required 'iat' claim"),
        ({"nbf": DROP}, "required 'nbf' claim"),
        ({"exp": DROP}, "required 'exp' claim"),
        ({"aud": DROP}, "required 'aud' claim"),
        ({"sub": DROP}, "required 'sub' claim"),
        ({"clinic": DROP}, "required 'clinic' claim"),
        ({"clinic": ""}, "required 'clinic' claim"),
        ({"clinic": ["north", "south"]}, "required 'clinic' claim"),
        ({"iss": "https://evil.example"}, "issuer is not accepted"),
        ({"iss": DROP}, "issuer is not accepted"),
        ({"exp": str(int(time.time()) + 300)}, "time claims must be numbers"),
    ],
)
def test_bad_claims_are_rejected(authn, keys, claims, match):
    refused(authn, make_token(keys, **claims), match)


def test_unknown_kid_and_missing_kid_are_rejected(authn, keys):
    stranger = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(make_claims(), stranger, algorithm="ES256", headers={"kid": "not-published"})
    refused(authn, token, "signing key is not known")
    refused(authn, jwt.encode(make_claims(), keys["ec-1"], algorithm="ES256"), "no key id")


def test_malformed_headers_are_rejected(authn, keys):
    with pytest.raises(AuthError, match="missing bearer token") as info:
        authn.authenticate({})
    # RFC 6750 3.1: no error code when the request carried no credentials at all.
    assert info.value.www_authenticate == 'Bearer realm="alliance-risk"'
    token = make_token(keys)
    with pytest.raises(AuthError, match="not a bearer token") as info:
        authn.authenticate({"Authorization": f"Basic {token}"})
    assert 'error="invalid_request"' in (info.value.www_authenticate or "")
    refused(authn, "not.a.jwt", "not a well-formed JWT")
    refused(authn, "x" * (auth.MAX_TOKEN_CHARS + 1), "too long")


def test_hostile_token_shapes_get_a_401_not_a_crash(authn):
    nested = b64(b"[" * 2500)  # within MAX_TOKEN_CHARS, deeper than json can recurse
    for token in (
        f"{nested}.{nested}.x",
        "a.b",
        "\u00e9.\u00e9.\u00e9",
        f"{b64(b'[]')}.{b64(b'1')}.x",
    ):
        refused(authn, token, "not a well-formed JWT")


def test_verified_tokens_are_cached_by_hash_until_expiry(jwks_file, keys, monkeypatch):
    wall = Clock()
    wall.now = time.time()
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)
    settings = AuthSettings(mode="jwt", issuers=[issuer], leeway_s=0, jwks_cache_s=300)
    authn = Authenticator(settings, wall_clock=wall)
    calls = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    token = make_token(keys, exp=int(wall.now) + 60)
    for _ in range(3):
        assert authn.authenticate(bearer(token)).clinic == "north"
    assert len(calls) == 1  # verified once, then served from the cache
    assert token not in repr(authn.verified._entries)
    wall.now += 61  # past exp: the cached token is refused, not re-served
    refused(authn, token, "has expired")
    assert len(authn.verified) == 0

    uncached = Authenticator(settings.model_copy(update={"verified_cache_size": 0}))
    for _ in range(2):
        uncached.authenticate(bearer(token := make_token(keys)))
    assert len(calls) == 3


def test_refusals_log_the_reason_class_only(authn, keys, caplog_auth):
    token = make_token(keys, sub="clinician-secret-name", clinic="clinic-secret", aud="nope")
    refused(authn, token, "audience")
    records = [r for r in caplog_auth.records if r.name == "service.auth"]
    assert [r.fields for r in records] == [{"reason": "audience", "method": "jwt"}]
    text = caplog_auth.text
    assert "clinician-secret-name" not in text and "clinic-secret" not in text
    assert token.split(".")[1] not in text


# -- scopes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"scope": "system/RiskAssessment.read openid"}, {"risk:read"}),
        ({"scope": "system/RiskAssessment.rs"}, {"risk:read"}),
        ({"scope": "system/Patient.read risk:admin"}, set()),
        ({"scope": DROP, "scp": ["model:read", "model:admin"]}, {"model:read", "model:admin"}),
        ({"scope": DROP}, set()),
    ],
)
def test_scopes_from_tokens_with_smart_aliases(authn, keys, claims, expected):
    assert authn.authenticate(bearer(make_token(keys, **claims))).scopes == expected


def test_require_scope_gives_403_with_the_missing_scope():
    reader = Principal("s", "north", frozenset({"risk:read"}), "t", "jwt")
    require_scope(reader, "risk:read")
    with pytest.raises(AuthError, match="needs the 'model:admin' scope") as info:
        require_scope(reader, "model:admin")
    assert info.value.status == 403
    assert info.value.headers == {
        "WWW-Authenticate": 'Bearer realm="alliance-risk", error="insufficient_scope", '
        'scope="model:admin"'
    }
    admin = Principal("s", "north", frozenset({"model:admin"}), "t", "jwt")
    with pytest.raises(AuthError, match="model:read"):
        require_scope(admin, "model:read")  # scopes are not hierarchical
    with pytest.raises(ValueError, match="unknown scope"):
        require_scope(reader, "risk:write")


# -- single-use tokens and the clinic claim -----------------------------------------------------


def test_single_use_tokens_are_refused_on_replay(jwks_file, keys):
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)
    authn = Authenticator(AuthSettings(mode="jwt", issuers=[issuer]))
    token = make_token(keys)
    assert authn.authenticate(bearer(token), single_use=True)
    refused(authn, token, "already been used", single_use=True)
    assert authn.authenticate(bearer(token))  # ordinary use does not consume it
    refused(authn, make_token(keys, jti=DROP), "required 'jti' claim", single_use=True)


def test_custom_clinic_claim(jwks_file, keys):
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)
    authn = Authenticator(AuthSettings(mode="jwt", issuers=[issuer], clinic_claim="tenant"))
    assert authn.authenticate(bearer(make_token(keys, clinic=DROP, tenant="east"))).clinic == "east"
    refused(authn, make_token(keys), "required 'tenant' claim")


# -- what the event loop may check --------------------------------------------------------------


def test_authenticate_known_answers_only_what_needs_no_signing_key(jwks_file, keys, monkeypatch):
    wall = Clock()
    wall.now = time.time()
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)
    settings = AuthSettings(mode="jwt", issuers=[issuer], leeway_s=0, jwks_cache_s=300)
    authn = Authenticator(settings, wall_clock=wall)
    lookups: list[str] = []
    real_get = auth.JwksSource.get
    monkeypatch.setattr(auth.JwksSource, "get",
                        lambda self, kid: lookups.append(kid) or real_get(self, kid))  # fmt: skip
    token = make_token(keys, exp=int(wall.now) + 60)
    assert authn.authenticate_known(bearer(token)) is None  # not verified yet: a thread's job
    assert lookups == []
    principal = authn.authenticate(bearer(token))
    assert lookups == ["rsa-1"]
    assert authn.authenticate_known(bearer(token)) == principal
    assert lookups == ["rsa-1"]  # the verified token needed no key
    # Refusals that need no key are the same as authenticate's.
    for headers, match in (({}, "missing bearer token"),
                           ({"Authorization": "Basic abc"}, "not a bearer token"),
                           ({"Authorization": "Bearer " + "a" * 9000}, "too long")):  # fmt: skip
        with pytest.raises(AuthError, match=match) as info:
            authn.authenticate_known(headers)
        assert info.value.status == 401
    wall.now += 61  # past exp: refused, not served from the cache
    with pytest.raises(AuthError, match="has expired"):
        authn.authenticate_known(bearer(token))
    assert lookups == ["rsa-1"]


def test_authenticate_known_checks_api_keys(tmp_path):
    key = auth.generate_api_key()
    path = tmp_path / "api-keys.json"
    path.write_text(json.dumps({"keys": [{"id": "front-1", "hash": auth.hash_api_key(key),
                                          "clinic": "north", "scopes": ["risk:read"]}]}))  # fmt: skip
    authn = Authenticator(AuthSettings(mode="api_key", api_keys_file=path))
    assert authn.authenticate_known({"X-API-Key": key}) == authn.authenticate({"X-API-Key": key})
    with pytest.raises(AuthError, match="API key is not valid"):
        authn.authenticate_known({"X-API-Key": key + "x"})
