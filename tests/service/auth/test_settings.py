"""``service.auth.settings``: required mode, issuers, JWKS URL rules and the start-up
description."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from service.auth import AuthSettings, IssuerConfig, describe
from tests.service.auth.helpers import AUD, ISS


def test_jwks_url_must_be_https_unless_loopback():
    with pytest.raises(ValidationError, match="must be https"):
        IssuerConfig(issuer=ISS, audience=AUD, jwks_url="http://idp.example.org/jwks")
    with pytest.raises(ValidationError, match="exactly one of jwks_file and jwks_url"):
        IssuerConfig(issuer=ISS, audience=AUD)
    assert IssuerConfig(issuer=ISS, audience=AUD, jwks_url="https://idp.example.org/jwks")


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
