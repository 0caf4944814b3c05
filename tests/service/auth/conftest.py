"""Fixtures of the ``service.auth`` tests: real signing keys, a JWKS file, a jwt-mode
authenticator on it, a JWKS endpoint on 127.0.0.1, and an environment without auth settings."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service import auth
from service.auth import Authenticator, AuthSettings, IssuerConfig
from tests.service.auth.helpers import AUD, ISS, JwksServer, jwks_doc


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """Real private keys by kid: RSA 2048 (RS256/RS384), EC P-256 (ES256), EC P-384 (ES384)."""
    return {
        "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec-1": ec.generate_private_key(ec.SECP256R1()),
        "ec384-1": ec.generate_private_key(ec.SECP384R1()),
    }


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
    path.write_text(json.dumps(jwks_doc(keys)))
    return path


@pytest.fixture(scope="module")
def authn(jwks_file: Path) -> Authenticator:
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)
    return Authenticator(AuthSettings(mode="jwt", issuers=[issuer]))


@pytest.fixture
def server(keys) -> Iterator[JwksServer]:
    srv = JwksServer(jwks_doc({"rsa-1": keys["rsa-1"], "ec-1": keys["ec-1"]}))
    yield srv
    srv.close()
