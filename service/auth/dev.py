"""Dev-mode keys and tokens, for ``make run`` on a workstation: a local ES256 key pair that
``ensure_dev_keys`` creates once, and ``mint_dev_token`` (behind ``alliance-risk token``).

Both refuse to run when ``ALLIANCE_RISK_DEPLOYMENT`` names a deployment (see
``check_dev_mode_allowed``). The private key is written with mode 0600 in a 0700 directory and
refused if it later becomes readable by others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from jwt.utils import base64url_encode

from service.audit import MAX_TEXT, is_audit_text
from service.auth.principal import check_scope_names
from service.auth.settings import check_dev_mode_allowed, default_dev_key_dir

# The package's one logger name, as before the split: log filters and alerts key on it.
logger = logging.getLogger("service.auth")

#: Issuer and audience of the tokens dev mode mints and accepts.
DEV_ISSUER = "urn:alliance-risk:dev"
DEV_AUDIENCE = "alliance-risk"
DEV_PRIVATE_KEY_FILE = "dev-signing-key.pem"
DEV_JWKS_FILE = "jwks.json"
_MAX_DEV_TTL_S = 24 * 3600


def _jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of an EC public JWK (the dev key's ``kid``)."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64url_encode(hashlib.sha256(canonical).digest()).decode()


def _write_new_private_key(path: Path) -> None:
    """Create ``path`` (mode 0600) with a new P-256 key, unless another process just did."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask could only narrow it, but be explicit
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        # link() fails if the target exists: with two workers starting at once, the first key
        # wins and both use it.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_dev_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise PermissionError(
            f"dev private key {path} is readable by other users (mode {mode & 0o777:o}); "
            "run chmod 600 on it"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"dev private key {path} is not a P-256 EC key")
    return key


def _dev_jwks(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=_jwk_thumbprint(jwk), alg="ES256", use="sig")
    return {"keys": [jwk]}


def ensure_dev_keys(key_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Create the dev ES256 key pair in ``key_dir`` once; return (private key path, JWKS).

    The private key is ``dev-signing-key.pem`` (mode 0600, in a 0700 directory); the public
    JWKS is also written to ``jwks.json`` next to it. Later calls reuse the key. Raises
    ``DevModeRefused`` in a named deployment and ``PermissionError`` if the key file has become
    readable by others.
    """
    check_dev_mode_allowed()
    key_dir = Path(key_dir) if key_dir is not None else default_dev_key_dir()
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = key_dir / DEV_PRIVATE_KEY_FILE
    if not private.exists():
        _write_new_private_key(private)
        logger.info("dev signing key created", extra={"fields": {"dir": str(key_dir)}})
    jwks = _dev_jwks(_load_dev_private_key(private))
    text = json.dumps(jwks, indent=2) + "\n"
    public = key_dir / DEV_JWKS_FILE
    if not public.exists() or public.read_text(encoding="utf-8") != text:
        tmp = public.with_name(f".{public.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, public)
    return private, jwks


def mint_dev_token(clinic: str, scopes: Iterable[str], ttl_s: int = 3600, sub: str = "dev-user",
                   *, key_dir: Path | None = None, clinic_claim: str = "clinic") -> str:  # fmt: skip
    """A dev-mode bearer token (ES256, issuer ``DEV_ISSUER``, audience ``DEV_AUDIENCE``).

    Parameters
    ----------
    clinic
        Value of the clinic claim (the tenant the token can read).
    scopes
        Scope names (``SCOPES`` or SMART aliases); at least one.
    ttl_s
        Lifetime in seconds, 1 to 86400.
    sub
        The ``sub`` claim.
    key_dir
        Dev key directory (default: ``<project root>/.alliance-risk/dev-keys``); keys are
        created if absent.
    clinic_claim
        Claim name for the clinic (``AuthSettings.clinic_claim``).
    """
    if not clinic.strip():
        raise ValueError("clinic must not be empty")
    if not sub.strip():
        raise ValueError("sub must not be empty")
    for name, value in (("clinic", clinic), ("sub", sub)):
        if not is_audit_text(value):  # the service would refuse the token (401 invalid_token)
            raise ValueError(
                f"{name} must be at most {MAX_TEXT} characters, without control characters"
            )
    names = list(scopes)
    if not names:
        raise ValueError("give at least one scope")
    check_scope_names(names)
    if not 1 <= ttl_s <= _MAX_DEV_TTL_S:
        raise ValueError(f"ttl_s must be between 1 and {_MAX_DEV_TTL_S} seconds")
    private, jwks = ensure_dev_keys(key_dir)
    key = _load_dev_private_key(private)
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": sub,
        clinic_claim: clinic,
        "scope": " ".join(dict.fromkeys(names)),
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl_s),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": jwks["keys"][0]["kid"]})
