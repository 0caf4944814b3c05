"""Keys, tokens and a local JWKS endpoint shared by the ``service.auth`` tests."""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.auth import Authenticator, AuthError, AuthSettings, IssuerConfig

ISS = "https://idp.example.org/realms/clinics"
AUD = "alliance-risk"
DROP = object()  # marks a claim to leave out of a token


def public_jwk(kid: str, key: Any) -> dict[str, Any]:
    algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk = algo.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig")
    return jwk


def jwks_doc(keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": [public_jwk(kid, key) for kid, key in keys.items()]}


def make_claims(**overrides: Any) -> dict[str, Any]:
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


def make_token(keys: dict[str, Any], kid: str = "rsa-1", alg: str = "RS256", **claims: Any) -> str:
    return jwt.encode(make_claims(**claims), keys[kid], algorithm=alg, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A JWT built by hand, so tests can forge what PyJWT's encoder refuses to produce."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = (
        b"" if secret is None else hmac.new(secret, signing_input.encode(), "sha256").digest()
    )
    return f"{signing_input}.{b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(authn: Authenticator, token: str, match: str, **kwargs: Any) -> AuthError:
    """Assert a 401 whose detail matches and which quotes nothing of the token."""
    with pytest.raises(AuthError, match=match) as info:
        authn.authenticate(bearer(token), **kwargs)
    err = info.value
    assert err.status == 401
    assert err.www_authenticate is not None
    assert err.www_authenticate.startswith('Bearer realm="alliance-risk"')
    for part in token.split("."):
        if len(part) > 8:
            assert part not in f"{err} {err.detail} {err.www_authenticate}"
    return err


class JwksServer:
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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def url_authn(server: JwksServer, clock: Clock, **settings: Any) -> Authenticator:
    issuer = IssuerConfig(issuer=ISS, audience=AUD, jwks_url=server.url)
    options = {"jwks_cache_s": 300.0, "jwks_refetch_cooldown_s": 10.0, **settings}
    return Authenticator(AuthSettings(mode="jwt", issuers=[issuer], **options), clock=clock)
