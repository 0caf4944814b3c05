"""``service.auth.jwks``: a JWKS URL served on 127.0.0.1 (caching, key rotation, cooldown,
outages, a trickling or slow issuer) and the parsing of JWKS documents."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.auth import AuthError, AuthSettings, IssuerConfig, keys_from_jwks
from tests.service.auth.helpers import (
    AUD,
    ISS,
    Clock,
    b64,
    bearer,
    jwks_doc,
    make_claims,
    make_token,
    public_jwk,
    refused,
    url_authn,
)


def test_jwks_url_is_fetched_once_and_cached(server, keys):
    clock = Clock()
    authn = url_authn(server, clock)
    assert server.hits == 0  # nothing fetched until needed
    for kid, alg in (("rsa-1", "RS256"), ("ec-1", "ES256"), ("rsa-1", "RS384")):
        assert authn.authenticate(bearer(make_token(keys, kid, alg))).clinic == "north"
    assert server.hits == 1
    clock.now += 301  # cache expired: fetched again
    authn.authenticate(bearer(make_token(keys)))
    assert server.hits == 2


def test_unknown_kid_refetches_once_then_respects_the_cooldown(server, keys):
    clock = Clock()
    authn = url_authn(server, clock)
    authn.authenticate(bearer(make_token(keys)))
    assert server.hits == 1
    # The issuer rotates in a new key; the first token with its kid triggers one refetch.
    rotated = ec.generate_private_key(ec.SECP256R1())
    server.doc = jwks_doc({"ec-1": keys["ec-1"], "ec-2": rotated})
    clock.now += 11
    token = jwt.encode(make_claims(), rotated, algorithm="ES256", headers={"kid": "ec-2"})
    assert authn.authenticate(bearer(token)).subject == "clinician-7"
    assert server.hits == 2
    # Made-up kids within the cooldown cost no fetch at all.
    for i in range(5):
        bogus = jwt.encode(
            make_claims(), rotated, algorithm="ES256", headers={"kid": f"made-up-{i}"}
        )
        refused(authn, bogus, "signing key is not known")
    assert server.hits == 2
    clock.now += 11
    refused(authn, bogus, "signing key is not known")
    assert server.hits == 3  # exactly one refetch per unknown kid after the cooldown


def test_issuer_outage_keeps_cached_keys_and_503_without_any(server, keys, caplog_auth):
    clock = Clock()
    authn = url_authn(server, clock)
    assert authn.warm() == {ISS: True}
    server.status = 500
    clock.now += 301
    assert authn.authenticate(bearer(make_token(keys))).clinic == "north"
    assert server.hits == 2
    failures = [r for r in caplog_auth.records if r.getMessage() == "JWKS load failed"]
    assert [r.fields for r in failures] == [{"issuer": ISS, "error": "HTTPError"}]

    cold = url_authn(server, Clock())
    with pytest.raises(AuthError, match="signing keys are unavailable") as info:
        cold.authenticate(bearer(make_token(keys)))
    assert info.value.status == 503


def test_a_jwks_endpoint_trickling_bytes_is_given_up_after_the_timeout(server, keys, caplog_auth):
    # Each byte arrives well within the socket timeout; only the fetch's deadline stops it.
    server.trickle_s = 0.05
    authn = url_authn(server, Clock(), jwks_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(AuthError, match="signing keys are unavailable") as info:
        authn.authenticate(bearer(make_token(keys)))
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
    from service.audit_log import AuditSettings
    from service.deps import NO_MODEL
    from service.limits import LimitSettings
    from service.settings import ServiceSettings

    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_url=server.url)
    # A second issuer whose keys are a local file: its tokens need no fetch.
    other_iss, other_key = "https://other-idp.example.org", ec.generate_private_key(ec.SECP256R1())
    other_jwks = tmp_path / "other-jwks.json"
    other_jwks.write_text(json.dumps(jwks_doc({"o-1": other_key})))
    other = IssuerConfig(issuer=other_iss, audience=AUD, jwks_file=other_jwks)
    app = create_app(
        ServiceSettings(model_uri="models:/alliance-risk-svc@champion", poll_interval_s=0),
        auth=AuthSettings(mode="jwt", issuers=[issuer, other], jwks_timeout_s=10,
                          jwks_refetch_cooldown_s=0),
        limits=LimitSettings(rate_per_clinic_per_s=0, rate_per_token_per_s=0),
        audit=AuditSettings(path=tmp_path / "audit.jsonl", key_file=tmp_path / "audit.key"),
        client_factory=_NoChampion,
        configure_logs=False,
    )  # fmt: skip
    rotated = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(make_claims(scope="model:read"), rotated, algorithm="ES256",
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
        server.doc = jwks_doc({"ec-1": keys["ec-1"], "ec-2": rotated})
        server.hold = True
        waiting, probe, second = get("model", "/v1/model", bearer(token)), None, None
        try:
            assert server.entered.wait(5), "the unknown kid did not cause a refetch"
            probe = get("livez", "/livez")
            probe.join(3)
            assert "livez" in answers, "/livez stalled behind a JWKS fetch"
            assert answers["livez"].status_code == 200
            # Nor does it hold up requests that need no fetch (with the default single route
            # thread, authenticating on it would).
            fine = jwt.encode(make_claims(iss=other_iss, scope="model:read"), other_key,
                              algorithm="ES256", headers={"kid": "o-1"})  # fmt: skip
            second = get("other", "/v1/model", bearer(fine))
            second.join(3)
            assert "other" in answers, "a request of another issuer stalled behind a JWKS fetch"
            assert answers["other"].json()["detail"] == NO_MODEL  # authenticated, then 503
            assert "model" not in answers  # still waiting for the issuer's keys
        finally:
            server.release.set()
            for thread in (waiting, probe, second):
                if thread is not None:
                    thread.join(15)
    assert server.hits == 2
    # Authenticated with the rotated key, then refused only for want of a model.
    assert answers["model"].status_code == 503
    assert answers["model"].json()["detail"] == NO_MODEL


def test_jwks_parsing_skips_unusable_keys(keys):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p521 = ec.generate_private_key(ec.SECP521R1())
    doc = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": b64(b"k" * 32)},
            public_jwk("weak", weak),
            public_jwk("p521", p521),
            {**public_jwk("enc", keys["rsa-1"]), "use": "enc"},
            {**public_jwk("rs384-only", keys["rsa-1"]), "alg": "RS384"},
            {**public_jwk("hs-labelled", keys["rsa-1"]), "alg": "HS256"},
            {k: v for k, v in public_jwk("x", keys["ec-1"]).items() if k != "kid"},
            public_jwk("ok", keys["ec-1"]),
            "not a key",
        ]
    }
    parsed = keys_from_jwks(doc)
    assert set(parsed) == {"rs384-only", "ok"}
    assert parsed["rs384-only"].algorithms == ("RS384",)
    assert parsed["ok"].algorithms == ("ES256",)
    with pytest.raises(ValueError, match="no 'keys' list"):
        keys_from_jwks({"kty": "RSA"})
