"""``service.auth.dev``: dev keys, dev tokens, the refusal of dev mode in a named deployment,
and the ``token`` command."""

from __future__ import annotations

import json
import stat

import jwt
import pytest
import typer
from typer.testing import CliRunner

from service import auth
from service.auth import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    Authenticator,
    AuthSettings,
    DevModeRefused,
    ensure_dev_keys,
    mint_dev_token,
)
from service.token_cli import register
from tests.service.auth.helpers import bearer, refused

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
    principal = dev.authenticate(bearer(token))
    assert principal.method == "dev"
    assert (principal.subject, principal.clinic) == ("me", "north")
    assert principal.scopes == {"risk:read", "model:read"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["iss"], claims["aud"]) == (DEV_ISSUER, DEV_AUDIENCE)
    assert claims["exp"] - claims["iat"] == 120
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    refused(authn, token, "issuer is not accepted")  # a jwt-mode service ignores dev tokens
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
        bearer(token)
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


@pytest.mark.parametrize("claim", ["sub", "clinic"])
def test_no_dev_token_for_a_subject_or_clinic_the_service_would_refuse(tmp_path, claim):
    args = {"sub": "me", "clinic": "north", claim: "a" * 300}
    with pytest.raises(ValueError, match=f"{claim} must be at most 256 characters"):
        mint_dev_token(args["clinic"], ["risk:read"], sub=args["sub"], key_dir=tmp_path / "k")
    with pytest.raises(ValueError, match=f"{claim} must be at most 256 characters"):
        mint_dev_token(**{**args, claim: "x\ny"}, scopes=["risk:read"], key_dir=tmp_path / "k")
    long = CliRunner().invoke(_cli(), ["token", "--clinic", "north", "--scope", "risk:read",
                                       "--subject", "a" * 300, "--key-dir", str(tmp_path / "k")])  # fmt: skip
    assert long.exit_code == 2 and "sub must be at most 256" in long.stderr
    assert long.stdout == ""
