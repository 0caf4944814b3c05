"""The CDS Hooks replay cache shared by the workers of ``serve --workers N``
(:class:`service.shared_limits.SharedJtiReplayCache`): a jti used at one worker is refused at
every other, expired ids are forgotten, and a full or broken cache refuses (fail closed)."""

from __future__ import annotations

import time
import uuid

import pytest

from service.shared_limits import SharedJtiReplayCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_jti_seen_by_one_process_is_a_replay_for_another(tmp_path) -> None:
    clock = FakeClock()
    one, two = (SharedJtiReplayCache(tmp_path, clock=clock) for _ in range(2))
    try:
        assert one.seen("iss\x00a", 1_300.0) is False
        assert two.seen("iss\x00a", 1_300.0) is True
        assert one.seen("iss\x00a", 1_300.0) is True
        assert two.seen("iss\x00b", 1_300.0) is False
        clock.now += 301  # both expired: forgotten, and a fresh token may reuse nothing
        assert len(one) == 0
        assert two.seen("iss\x00c", 1_400.0) is False
    finally:
        one.close()
        two.close()


def test_the_file_holds_digests_not_token_ids(tmp_path) -> None:
    cache = SharedJtiReplayCache(tmp_path, clock=lambda: 0.0)
    cache.seen("https://ehr.example/\x00secret-jti", 10.0)
    cache.close()
    assert b"secret-jti" not in cache.path.read_bytes()


def test_a_full_or_broken_shared_cache_refuses(tmp_path) -> None:
    cache = SharedJtiReplayCache(tmp_path, max_entries=2, clock=lambda: 0.0)
    assert not cache.seen("a", 10.0) and not cache.seen("b", 10.0)
    assert cache.seen("c", 10.0) is True  # full: a new id is refused, never an old one dropped
    cache._db.execute("DROP TABLE jti")
    assert cache.seen("d", 10.0) is True  # the database fails: refused
    cache.close()


def test_build_security_shares_the_replay_cache_when_serve_shares_a_folder(tmp_path) -> None:
    from service.app import build_security
    from service.audit_log import AuditSettings
    from service.auth import AuthSettings
    from service.limits import LimitSettings

    security, _, _ = build_security(
        AuthSettings(mode="dev", dev_key_dir=tmp_path / "keys"),
        LimitSettings(rate_per_clinic_per_s=0, rate_per_token_per_s=0, shared_dir=tmp_path),
        AuditSettings(path=tmp_path / "audit.jsonl", key_file=tmp_path / "audit.key"),
    )
    assert isinstance(security.authenticator.replay_cache, SharedJtiReplayCache)


@pytest.mark.integration
def test_a_cds_token_is_single_use_across_two_real_workers(registry, tmp_path, dev_key_dir):
    """``serve --workers 2``: the same CDS JWT sent 16 times over fresh connections (both
    workers answer) is accepted once. It was accepted once per worker before."""
    import httpx
    import jwt

    from service.auth.dev import DEV_ISSUER, _load_dev_private_key, ensure_dev_keys
    from tests.service.serving import serving
    from tests.service.test_cds_support import PATIENT_VIEW, client_resources, hook_body

    public = "https://risk.example.org"
    env = {"ALLIANCE_RISK_CDS_PUBLIC_URL": public, "ALLIANCE_RISK_CDS_LOW_RISK_CARD": "info"}
    private, jwks = ensure_dev_keys(dev_key_dir)
    now = int(time.time())
    claims = {"iss": DEV_ISSUER, "aud": f"{public}/cds-services/{PATIENT_VIEW}", "iat": now,
              "exp": now + 120, "jti": uuid.uuid4().hex, "clinic": "clinic-test"}  # fmt: skip
    token = jwt.encode(claims, _load_dev_private_key(private), algorithm="ES256",
                       headers={"kid": jwks["keys"][0]["kid"], "typ": "JWT"})  # fmt: skip
    client_id = str(registry.cohort.clients["client_id"].iloc[0])
    body = hook_body(client_resources(registry, client_id, registry.cohort.profile))
    with serving(registry, tmp_path / "serve", dev_key_dir, workers=2, env=env) as url:
        statuses = [
            httpx.post(
                f"{url}/cds-services/{PATIENT_VIEW}",
                json=body,
                timeout=20,
                headers={"Authorization": f"Bearer {token}"},
            ).status_code  # fmt: skip
            for _ in range(16)
        ]
    assert statuses.count(200) == 1 and statuses.count(401) == 15, statuses
