"""docker-compose.yml must stay a valid deployment description (no Docker engine runs here)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_is_buildable_or_pulled_and_dependencies_exist() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "mlflow"} <= set(services)
    for name, svc in services.items():
        assert ("image" in svc) != ("build" in svc), f"{name}: exactly one of image/build"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in compose.get("volumes", {}), f"{name}: undeclared volume {source}"


def test_published_ports_bind_loopback_only() -> None:
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_no_secret_is_written_into_the_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
    assert "password=" not in text.lower()


def test_api_cannot_run_in_dev_auth_mode_and_needs_auth_and_audit_secrets() -> None:
    api = _compose()["services"]["api"]
    env = api["environment"]
    assert env["ALLIANCE_RISK_DEPLOYMENT"] == "compose"  # service.auth refuses dev mode then
    assert "--dev-auth" not in api["command"]
    # No default: compose refuses to start until the operator chooses jwt or api_key.
    assert env["ALLIANCE_RISK_AUTH_MODE"].startswith("${ALLIANCE_RISK_AUTH_MODE:?")
    assert env["ALLIANCE_RISK_AUDIT_KEY"].startswith("${ALLIANCE_RISK_AUDIT_KEY:?")
