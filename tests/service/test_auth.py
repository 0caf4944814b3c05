"""``service.auth``: JWT verification against real RSA/EC keys (JWKS file and a JWKS URL served
on 127.0.0.1), API keys, scopes, the replay cache, dev keys and the ``token`` command."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError
from typer.testing import CliRunner

from service import auth
from service.auth import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    Authenticator,
    AuthError,
    AuthSettings,
    DevModeRefused,
    IssuerConfig,
    JtiReplayCache,
    Principal,
    describe,
    ensure_dev_keys,
    generate_api_key,
    hash_api_key,
    keys_from_jwks,
    load_api_keys,
    mint_dev_token,
    require_scope,
    verify_api_key,
)
from service.token_cli import register

ISS = "https://idp.example.org/realms/clinics"
AUD = "alliance-risk"
DROP = object()  # marks a claim to leave out of a token


# -- keys and tokens ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """Real private keys by kid: RSA 2048 (RS256/RS384), EC P-256 (ES256), EC P-384 (ES384)."""
    return {
        "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec-1": ec.generate_private_key(ec.SECP256R1()),
        "ec384-1": ec.generate_private_key(ec.SECP384R1()),
    }


def _public_jwk(kid: str, key: Any) -> dict[str, Any]:
    algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk = algo.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig")
    return jwk


def _jwks(keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": [_public_jwk(kid, key) for kid, key in keys.items()]}


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "clinician-7",
        "clinic": "north",
        "scope": "risk:read risk:batch",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not DROP}


def _token(keys: dict[str, Any], kid: str = "rsa-1", alg: str = "RS256", **claims: Any) -> str:
    return jwt.encode(_claims(**claims), keys[kid], algorithm=alg, headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _handmade(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A JWT built by hand, so tests can forge what PyJWT's encoder refuses to produce."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = (
        b"" if secret is None else hmac.new(secret, signing_input.encode(), "sha256").digest()
    )
    return f"{signing_input}.{_b64(signature)}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own auth settings must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("ALLIANCE_RISK_AUTH_") or name == auth.DEPLOYMENT_ENV:
            monkeypatch.delenv(name)


@pytest.fixture
def caplog_auth(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """caplog for ``service.auth``, even after a test app has installed the JSON handler (which
    stops ``service`` records from propagating to the root logger caplog listens on)."""
    monkeypatch.setattr(logging.getLogger("service"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="service.auth"):
        yield caplog


@pytest.fixture(scope="module")
def jwks_file(keys: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(_jwks(keys)))
    return path


@pytest.fixture(scope="module")
def authn(jwks_file: Path) -> Authenticator:
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)
    return Authenticator(AuthSettings(mode="jwt", issuers=[issuer]))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refused(authn: Authenticator, token: str, match: str, **kwargs: Any) -> AuthError:
    """Assert a 401 whose detail matches and which quotes nothing of the token."""
    with pytest.raises(AuthError, match=match) as info:
        authn.authenticate(_bearer(token), **kwargs)
    err = info.value
    assert err.status == 401
    assert err.www_authenticate is not None
    assert err.www_authenticate.startswith('Bearer realm="alliance-risk"')
    for part in token.split("."):
        if len(part) > 8:
            assert part not in f"{err} {err.detail} {err.www_authenticate}"
    return err


# -- accepted tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kid", "alg"),
    [("rsa-1", "RS256"), ("rsa-1", "RS384"), ("ec-1", "ES256"), ("ec384-1", "ES384")],
)
def test_valid_asymmetric_tokens_are_accepted(authn, keys, kid, alg):
    token = _token(keys, kid, alg, jti="abc-123")
    principal = authn.authenticate(_bearer(token))
    assert principal == Principal(
        subject="clinician-7",
        clinic="north",
        scopes=frozenset({"risk:read", "risk:batch"}),
        token_id="abc-123",
        method="jwt",
    )


def test_header_lookup_is_case_insensitive_and_scheme_too(authn, keys):
    token = _token(keys)
    assert authn.authenticate({"authorization": f"bearer {token}"}).clinic == "north"


def test_token_without_jti_gets_a_stable_id_that_is_not_the_token(authn, keys):
    token = _token(keys, jti=DROP)
    first = authn.authenticate(_bearer(token)).token_id
    assert first == authn.authenticate(_bearer(token)).token_id
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 16
    assert first[7:] not in token
    assert authn.authenticate(_bearer(_token(keys, jti=DROP, sub="x"))).token_id != first


def test_clock_skew_within_leeway_is_tolerated(authn, keys):
    now = int(time.time())
    assert authn.authenticate(_bearer(_token(keys, exp=now - 10)))
    assert authn.authenticate(_bearer(_token(keys, nbf=now + 10, iat=now + 10)))


# -- refused tokens -----------------------------------------------------------------------------


def test_alg_none_is_rejected(authn, keys):
    token = _handmade({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, _claims(), None)
    _refused(authn, token, "algorithm is not accepted")


def test_hs256_with_a_shared_secret_is_rejected(authn, keys):
    token = _handmade({"alg": "HS256", "kid": "rsa-1"}, _claims(), b"s" * 32)
    _refused(authn, token, "algorithm is not accepted")


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
            f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}"
        )
        forged = f"{signing_input}.{_b64(hmac.new(pem, signing_input.encode(), digest).digest())}"
        _refused(authn, forged, "algorithm is not accepted")


def test_algorithm_must_match_the_selected_key(authn, keys):
    # Signed by the EC key but pointing at the RSA key's kid.
    token = jwt.encode(_claims(), keys["ec-1"], algorithm="ES256", headers={"kid": "rsa-1"})
    _refused(authn, token, "does not match its key")


def test_tampered_claims_fail_the_signature(authn, keys):
    header, payload, signature = _token(keys).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["clinic"] = "south"  # an attempt to read another clinic
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    _refused(authn, forged, "signature is invalid")


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
    _refused(authn, _token(keys, **claims), match)


def test_unknown_kid_and_missing_kid_are_rejected(authn, keys):
    stranger = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(), stranger, algorithm="ES256", headers={"kid": "not-published"})
    _refused(authn, token, "signing key is not known")
    _refused(authn, jwt.encode(_claims(), keys["ec-1"], algorithm="ES256"), "no key id")


def test_malformed_headers_are_rejected(authn, keys):
    with pytest.raises(AuthError, match="missing bearer token") as info:
        authn.authenticate({})
    # RFC 6750 3.1: no error code when the request carried no credentials at all.
    assert info.value.www_authenticate == 'Bearer realm="alliance-risk"'
    token = _token(keys)
    with pytest.raises(AuthError, match="not a bearer token") as info:
        authn.authenticate({"Authorization": f"Basic {token}"})
    assert 'error="invalid_request"' in (info.value.www_authenticate or "")
    _refused(authn, "not.a.jwt", "not a well-formed JWT")
    _refused(authn, "x" * (auth.MAX_TOKEN_CHARS + 1), "too long")


def test_hostile_token_shapes_get_a_401_not_a_crash(authn):
    nested = _b64(b"[" * 2500)  # within MAX_TOKEN_CHARS, deeper than json can recurse
    for token in (
        f"{nested}.{nested}.x",
        "a.b",
        "\u00e9.\u00e9.\u00e9",
        f"{_b64(b'[]')}.{_b64(b'1')}.x",
    ):
        _refused(authn, token, "not a well-formed JWT")


def test_verified_tokens_are_cached_by_hash_until_expiry(jwks_file, keys, monkeypatch):
    wall = _Clock()
    wall.now = time.time()
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)
    settings = AuthSettings(mode="jwt", issuers=[issuer], leeway_s=0, jwks_cache_s=300)
    authn = Authenticator(settings, wall_clock=wall)
    calls = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    token = _token(keys, exp=int(wall.now) + 60)
    for _ in range(3):
        assert authn.authenticate(_bearer(token)).clinic == "north"
    assert len(calls) == 1  # verified once, then served from the cache
    assert token not in repr(authn.verified._entries)
    wall.now += 61  # past exp: the cached token is refused, not re-served
    _refused(authn, token, "has expired")
    assert len(authn.verified) == 0

    uncached = Authenticator(settings.model_copy(update={"verified_cache_size": 0}))
    for _ in range(2):
        uncached.authenticate(_bearer(token := _token(keys)))
    assert len(calls) == 3


def test_refusals_log_the_reason_class_only(authn, keys, caplog_auth):
    token = _token(keys, sub="clinician-secret-name", clinic="clinic-secret", aud="nope")
    _refused(authn, token, "audience")
    records = [r for r in caplog_auth.records if r.name == "service.auth"]
    assert [r.fields for r in records] == [{"reason": "audience", "method": "jwt"}]
    text = caplog_auth.text
    assert "clinician-secret-name" not in text and "clinic-secret" not in text
    assert token.split(".")[1] not in text


# -- JWKS served over HTTP on 127.0.0.1 ---------------------------------------------------------


class _JwksServer:
    """A tiny JWKS endpoint: serves ``doc`` with ``status``, counts hits.

    With ``hold`` set, a request signals ``entered`` and answers only once ``release`` is set
    (a slow issuer). With ``trickle_s`` set, the body goes out one byte per ``trickle_s``.
    """

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc, self.status, self.hits = doc, 200, 0
        self.hold, self.trickle_s = False, 0.0
        self.entered, self.release = threading.Event(), threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                if outer.hold:
                    outer.entered.set()
                    outer.release.wait(10)
                body = json.dumps(outer.doc).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not outer.trickle_s:
                    self.wfile.write(body)
                    return
                for i in range(len(body)):
                    try:
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        return  # the client gave up
                    time.sleep(outer.trickle_s)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(keys) -> Iterator[_JwksServer]:
    srv = _JwksServer(_jwks({"rsa-1": keys["rsa-1"], "ec-1": keys["ec-1"]}))
    yield srv
    srv.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _url_authn(server: _JwksServer, clock: _Clock, **settings: Any) -> Authenticator:
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_url=server.url)
    options = {"jwks_cache_s": 300.0, "jwks_refetch_cooldown_s": 10.0, **settings}
    return Authenticator(AuthSettings(mode="jwt", issuers=[issuer], **options), clock=clock)


def test_jwks_url_is_fetched_once_and_cached(server, keys):
    clock = _Clock()
    authn = _url_authn(server, clock)
    assert server.hits == 0  # nothing fetched until needed
    for kid, alg in (("rsa-1", "RS256"), ("ec-1", "ES256"), ("rsa-1", "RS384")):
        assert authn.authenticate(_bearer(_token(keys, kid, alg))).clinic == "north"
    assert server.hits == 1
    clock.now += 301  # cache expired: fetched again
    authn.authenticate(_bearer(_token(keys)))
    assert server.hits == 2


def test_unknown_kid_refetches_once_then_respects_the_cooldown(server, keys):
    clock = _Clock()
    authn = _url_authn(server, clock)
    authn.authenticate(_bearer(_token(keys)))
    assert server.hits == 1
    # The issuer rotates in a new key; the first token with its kid triggers one refetch.
    rotated = ec.generate_private_key(ec.SECP256R1())
    server.doc = _jwks({"ec-1": keys["ec-1"], "ec-2": rotated})
    clock.now += 11
    token = jwt.encode(_claims(), rotated, algorithm="ES256", headers={"kid": "ec-2"})
    assert authn.authenticate(_bearer(token)).subject == "clinician-7"
    assert server.hits == 2
    # Made-up kids within the cooldown cost no fetch at all.
    for i in range(5):
        bogus = jwt.encode(_claims(), rotated, algorithm="ES256", headers={"kid": f"made-up-{i}"})
        _refused(authn, bogus, "signing key is not known")
    assert server.hits == 2
    clock.now += 11
    _refused(authn, bogus, "signing key is not known")
    assert server.hits == 3  # exactly one refetch per unknown kid after the cooldown


def test_issuer_outage_keeps_cached_keys_and_503_without_any(server, keys, caplog_auth):
    clock = _Clock()
    authn = _url_authn(server, clock)
    assert authn.warm() == {ISS: True}
    server.status = 500
    clock.now += 301
    assert authn.authenticate(_bearer(_token(keys))).clinic == "north"
    assert server.hits == 2
    failures = [r for r in caplog_auth.records if r.getMessage() == "JWKS load failed"]
    assert [r.fields for r in failures] == [{"issuer": ISS, "error": "HTTPError"}]

    cold = _url_authn(server, _Clock())
    with pytest.raises(AuthError, match="signing keys are unavailable") as info:
        cold.authenticate(_bearer(_token(keys)))
    assert info.value.status == 503


def test_a_jwks_endpoint_trickling_bytes_is_given_up_after_the_timeout(server, keys, caplog_auth):
    # Each byte arrives well within the socket timeout; only the fetch's deadline stops it.
    server.trickle_s = 0.05
    authn = _url_authn(server, _Clock(), jwks_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(AuthError, match="signing keys are unavailable") as info:
        authn.authenticate(_bearer(_token(keys)))
    assert time.monotonic() - started < 5  # the whole document would take about 30 s
    assert info.value.status == 503
    failures = [r for r in caplog_auth.records if r.getMessage() == "JWKS load failed"]
    assert [r.fields for r in failures] == [{"issuer": ISS, "error": "TimeoutError"}]


class _NoChampion:
    """A registry client whose alias lookup says "no such alias": the app starts without a
    model, so a request that passes authentication gets the no-model 503."""

    def get_model_version_by_alias(self, name: str, alias: str) -> None:
        error = LookupError(alias)
        error.error_code = "RESOURCE_DOES_NOT_EXIST"  # type: ignore[attr-defined]
        raise error


def test_a_slow_jwks_fetch_does_not_stall_other_requests(server, keys, tmp_path):
    # Imported here so the auth unit tests above do not depend on the whole app importing.
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.audit import AuditSettings
    from service.deps import NO_MODEL
    from service.limits import LimitSettings
    from service.settings import ServiceSettings

    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_url=server.url)
    app = create_app(
        ServiceSettings(model_uri="models:/alliance-risk-svc@champion", poll_interval_s=0),
        auth=AuthSettings(mode="jwt", issuers=[issuer], jwks_timeout_s=10,
                          jwks_refetch_cooldown_s=0),
        limits=LimitSettings(rate_per_clinic_per_s=0, rate_per_token_per_s=0),
        audit=AuditSettings(path=tmp_path / "audit.jsonl", key_file=tmp_path / "audit.key"),
        client_factory=_NoChampion,
        configure_logs=False,
    )  # fmt: skip
    rotated = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(scope="model:read"), rotated, algorithm="ES256",
                       headers={"kid": "ec-2"})  # fmt: skip
    answers: dict[str, Any] = {}

    def get(name: str, path: str, headers: dict[str, str] | None = None) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: answers.__setitem__(name, client.get(path, headers=headers))
        )
        thread.start()
        return thread

    with TestClient(app) as client:
        assert server.hits == 1  # warmed at start-up
        # The issuer rotates in a new key and becomes slow: the first token signed with it
        # makes one request wait for the refetch.
        server.doc = _jwks({"ec-1": keys["ec-1"], "ec-2": rotated})
        server.hold = True
        waiting, probe = get("model", "/v1/model", _bearer(token)), None
        try:
            assert server.entered.wait(5), "the unknown kid did not cause a refetch"
            probe = get("livez", "/livez")
            probe.join(3)
            assert "livez" in answers, "/livez stalled behind a JWKS fetch"
            assert answers["livez"].status_code == 200
            assert "model" not in answers  # still waiting for the issuer's keys
        finally:
            server.release.set()
            for thread in (waiting, probe):
                if thread is not None:
                    thread.join(15)
    assert server.hits == 2
    # Authenticated with the rotated key, then refused only for want of a model.
    assert answers["model"].status_code == 503
    assert answers["model"].json()["detail"] == NO_MODEL


def test_jwks_url_must_be_https_unless_loopback():
    with pytest.raises(ValidationError, match="must be https"):
        IssuerConfig(issuer=ISS, audience=AUD, jwks_url="http://idp.example.org/jwks")
    with pytest.raises(ValidationError, match="exactly one of jwks_file and jwks_url"):
        IssuerConfig(issuer=ISS, audience=AUD)
    assert IssuerConfig(issuer=ISS, audience=AUD, jwks_url="https://idp.example.org/jwks")


def test_jwks_parsing_skips_unusable_keys(keys):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p521 = ec.generate_private_key(ec.SECP521R1())
    doc = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": _b64(b"k" * 32)},
            _public_jwk("weak", weak),
            _public_jwk("p521", p521),
            {**_public_jwk("enc", keys["rsa-1"]), "use": "enc"},
            {**_public_jwk("rs384-only", keys["rsa-1"]), "alg": "RS384"},
            {**_public_jwk("hs-labelled", keys["rsa-1"]), "alg": "HS256"},
            {k: v for k, v in _public_jwk("x", keys["ec-1"]).items() if k != "kid"},
            _public_jwk("ok", keys["ec-1"]),
            "not a key",
        ]
    }
    parsed = keys_from_jwks(doc)
    assert set(parsed) == {"rs384-only", "ok"}
    assert parsed["rs384-only"].algorithms == ("RS384",)
    assert parsed["ok"].algorithms == ("ES256",)
    with pytest.raises(ValueError, match="no 'keys' list"):
        keys_from_jwks({"kty": "RSA"})


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
    assert authn.authenticate(_bearer(_token(keys, **claims))).scopes == expected


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


# -- replay cache -------------------------------------------------------------------------------


def test_replay_cache_remembers_until_expiry_and_is_bounded():
    clock = _Clock()
    cache = JtiReplayCache(max_entries=2, clock=clock)
    assert cache.seen("a", clock.now + 60) is False
    assert cache.seen("a", clock.now + 60) is True
    assert cache.seen("b", clock.now + 10) is False
    # Full: a new id is refused rather than forgetting a live one (fail closed).
    assert cache.seen("c", clock.now + 60) is True
    clock.now += 11  # "b" expired and is purged, freeing a slot
    assert len(cache) == 1
    assert cache.seen("c", clock.now + 60) is False
    clock.now += 60
    assert len(cache) == 0
    assert cache.seen("a", clock.now + 60) is False  # forgotten after its expiry
    assert cache.seen("old", clock.now - 1) is False and len(cache) == 1


def test_replay_cache_lets_exactly_one_of_concurrent_presentations_through():
    cache = JtiReplayCache()
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def present() -> None:
        barrier.wait()
        results.append(cache.seen("same-jti", time.time() + 60))

    threads = [threading.Thread(target=present) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] + [True] * 7


def test_single_use_tokens_are_refused_on_replay(jwks_file, keys):
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)
    authn = Authenticator(AuthSettings(mode="jwt", issuers=[issuer]))
    token = _token(keys)
    assert authn.authenticate(_bearer(token), single_use=True)
    _refused(authn, token, "already been used", single_use=True)
    assert authn.authenticate(_bearer(token))  # ordinary use does not consume it
    _refused(authn, _token(keys, jti=DROP), "required 'jti' claim", single_use=True)


# -- API keys -----------------------------------------------------------------------------------


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


# -- dev mode -----------------------------------------------------------------------------------


def test_dev_keys_are_created_once_with_private_mode_0600(tmp_path):
    key_dir = tmp_path / "dev-keys"
    private, jwks = ensure_dev_keys(key_dir)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    inode, pem = private.stat().st_ino, private.read_bytes()
    again, jwks_again = ensure_dev_keys(key_dir)
    assert (again, again.stat().st_ino, again.read_bytes()) == (private, inode, pem)
    assert jwks_again == jwks
    assert json.loads((key_dir / auth.DEV_JWKS_FILE).read_text()) == jwks
    (jwk,) = jwks["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("EC", "P-256", "ES256") and "d" not in jwk
    names = sorted(p.name for p in key_dir.iterdir())
    assert names == sorted([auth.DEV_JWKS_FILE, auth.DEV_PRIVATE_KEY_FILE])  # no temp files left

    private.chmod(0o644)
    with pytest.raises(PermissionError, match="readable by other users"):
        ensure_dev_keys(key_dir)


def test_dev_tokens_verify_in_dev_mode_only(tmp_path, authn):
    key_dir = tmp_path / "dev-keys"
    token = mint_dev_token("north", ["risk:read", "model:read"], ttl_s=120, sub="me",
                           key_dir=key_dir)  # fmt: skip
    dev = Authenticator(AuthSettings(mode="dev", dev_key_dir=key_dir))
    principal = dev.authenticate(_bearer(token))
    assert principal.method == "dev"
    assert (principal.subject, principal.clinic) == ("me", "north")
    assert principal.scopes == {"risk:read", "model:read"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["iss"], claims["aud"]) == (DEV_ISSUER, DEV_AUDIENCE)
    assert claims["exp"] - claims["iat"] == 120
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    _refused(authn, token, "issuer is not accepted")  # a jwt-mode service ignores dev tokens
    with pytest.raises(ValueError, match="unknown scope"):
        mint_dev_token("north", ["everything"], key_dir=key_dir)
    with pytest.raises(ValueError, match="ttl_s"):
        mint_dev_token("north", ["risk:read"], ttl_s=10**6, key_dir=key_dir)


def test_dev_mode_is_refused_in_the_compose_deployment(tmp_path, monkeypatch):
    monkeypatch.setenv(auth.DEPLOYMENT_ENV, "compose")
    with pytest.raises(DevModeRefused, match="ALLIANCE_RISK_DEPLOYMENT=compose"):
        AuthSettings(mode="dev", dev_key_dir=tmp_path)
    with pytest.raises(DevModeRefused):
        ensure_dev_keys(tmp_path / "k")
    with pytest.raises(DevModeRefused):
        mint_dev_token("north", ["risk:read"], key_dir=tmp_path / "k")
    assert not (tmp_path / "k").exists()
    monkeypatch.setenv(auth.DEPLOYMENT_ENV, "local")
    assert AuthSettings(mode="dev", dev_key_dir=tmp_path).mode == "dev"


# -- settings and description -------------------------------------------------------------------


def test_auth_mode_has_no_default_and_each_mode_needs_its_keys(monkeypatch, jwks_file):
    with pytest.raises(ValidationError, match="mode"):
        AuthSettings()
    with pytest.raises(ValidationError, match="needs at least one issuer"):
        AuthSettings(mode="jwt")
    with pytest.raises(ValidationError, match="API_KEYS_FILE"):
        AuthSettings(mode="api_key")
    with pytest.raises(ValidationError, match="each issuer may be configured once"):
        AuthSettings(mode="jwt", issuers=[{"issuer": ISS, "audience": AUD, "jwks_file": "a"}] * 2)
    issuers = [{"issuer": ISS, "audience": AUD, "jwks_file": str(jwks_file)}]
    monkeypatch.setenv("ALLIANCE_RISK_AUTH_MODE", "jwt")
    monkeypatch.setenv("ALLIANCE_RISK_AUTH_ISSUERS", json.dumps(issuers))
    monkeypatch.setenv("ALLIANCE_RISK_AUTH_LEEWAY_S", "5")
    settings = AuthSettings()
    assert settings.issuers == [IssuerConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)]
    assert (settings.leeway_s, settings.jwks_cache_s, settings.clinic_claim) == (5, 300, "clinic")


def test_describe_names_the_mode_without_secrets(tmp_path):
    url = "https://user:pw@idp.example.org/jwks?token=sekrit#frag"
    settings = AuthSettings(
        mode="jwt", issuers=[IssuerConfig(issuer=ISS, audience=AUD, jwks_url=url)]
    )
    text = describe(settings)
    assert "mode=jwt" in text and "https://idp.example.org/jwks" in text
    assert not any(s in text for s in ("sekrit", "pw", "user", "frag"))
    assert "NOT for production" in describe(AuthSettings(mode="dev", dev_key_dir=tmp_path))


def test_custom_clinic_claim(jwks_file, keys):
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)
    authn = Authenticator(AuthSettings(mode="jwt", issuers=[issuer], clinic_claim="tenant"))
    assert authn.authenticate(_bearer(_token(keys, clinic=DROP, tenant="east"))).clinic == "east"
    _refused(authn, _token(keys), "required 'tenant' claim")


# -- the token command --------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_token_command_prints_a_verifiable_dev_token(tmp_path):
    key_dir = tmp_path / "dev-keys"
    result = CliRunner().invoke(
        _cli(),
        ["token", "--clinic", "north", "--scope", "risk:read", "--scope", "risk:batch",
         "--ttl", "600", "--subject", "dr-who", "--key-dir", str(key_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "\n" not in token
    principal = Authenticator(AuthSettings(mode="dev", dev_key_dir=key_dir)).authenticate(
        _bearer(token)
    )
    assert (principal.clinic, principal.subject) == ("north", "dr-who")
    assert principal.scopes == {"risk:read", "risk:batch"}


def test_token_command_refuses_compose_and_bad_scopes(tmp_path, monkeypatch):
    args = ["token", "--clinic", "north", "--key-dir", str(tmp_path / "k")]
    bad = CliRunner().invoke(_cli(), [*args, "--scope", "risk:everything"])
    assert bad.exit_code == 2 and "unknown scope" in bad.stderr
    monkeypatch.setenv(auth.DEPLOYMENT_ENV, "compose")
    refused = CliRunner().invoke(_cli(), [*args, "--scope", "risk:read"])
    assert refused.exit_code == 1 and "Refused" in refused.stderr
    assert refused.stdout == ""
