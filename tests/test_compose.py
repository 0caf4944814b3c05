"""docker-compose.yml must stay a valid deployment description (no Docker engine runs here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: What an operator must set: every one is required with ${VAR:?}.
SECRETS = {
    "POSTGRES_PASSWORD": "not-a-real-password",
    "ALLIANCE_RISK_AUTH_MODE": "api_key",
    "ALLIANCE_RISK_AUDIT_KEY": "ab" * 32,
}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


#: The tag of the project's image: built once, by one service, and run by the others.
LOCAL_IMAGE = "alliance-risk:local"


def test_every_service_is_buildable_or_pulled_and_dependencies_exist() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "mlflow"} <= set(services)
    builders = [name for name, svc in services.items() if "build" in svc]
    # One build, tagged: every `build:` would otherwise make its own copy of the image.
    assert builders == ["init-volumes"], builders
    assert services["init-volumes"]["image"] == LOCAL_IMAGE
    for name, svc in services.items():
        assert "image" in svc, f"{name}: no image"
        if svc["image"] == LOCAL_IMAGE:
            continue  # built by init-volumes (compose does not pull what a service builds)
        assert "build" not in svc and ":" in svc["image"], f"{name}: a pinned, pulled image"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in svc.get("volumes", []):
            # A ${VAR:-default} source is the default unless the operator sets VAR.
            source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in compose.get("volumes", {}), f"{name}: undeclared volume {source}"


def test_published_ports_bind_loopback_only() -> None:
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_mlflow_is_not_published_it_has_no_authentication() -> None:
    # Whoever reaches it can move the champion alias; the README says how to reach its UI.
    assert "ports" not in _compose()["services"]["mlflow"]


def test_the_image_builds_without_buildkit() -> None:
    # Debian's docker-compose 1.29 builds with the classic builder: no COPY --chmod there.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--chmod" not in dockerfile
    joined = dockerfile.replace("\\\n", " ")
    chmod = re.search(r"^RUN chmod 0755 (.*)$", joined, re.MULTILINE)
    assert chmod, "the scripts are made executable"
    for script in ("compose-init.sh", "compose-train.sh", "healthcheck.py"):
        assert f"/usr/local/bin/{script}" in chmod.group(1).split(), script


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


def _dockerfile_uid() -> int:
    match = re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert match, "Dockerfile: the non-root user's uid"
    return int(match.group(1))


def _conditions(svc: dict) -> dict[str, str]:
    return {dep: cond["condition"] for dep, cond in svc.get("depends_on", {}).items()}


def test_each_service_waits_for_what_it_needs() -> None:
    services = _compose()["services"]
    assert _conditions(services["mlflow"]) == {
        "postgres": "service_healthy",
        "init-volumes": "service_completed_successfully",
    }
    assert _conditions(services["trainer"]) == {"mlflow": "service_healthy"}
    assert _conditions(services["api"]) == {
        "mlflow": "service_healthy",
        "trainer": "service_completed_successfully",
    }
    for name in ("postgres", "mlflow", "api"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert services["api"]["healthcheck"]["test"][-1].endswith("/readyz")
    for name in ("init-volumes", "trainer"):  # one-shot jobs: a restart would loop
        assert services[name]["restart"] == "no", name


def test_mlflow_accepts_the_host_name_the_stack_uses_and_no_other() -> None:
    command = _compose()["services"]["mlflow"]["command"]
    allowed = [arg.split("=", 1)[1] for arg in command if arg.startswith("--allowed-hosts=")]
    assert len(allowed) == 1
    hosts = allowed[0].split(",")
    assert "mlflow:5000" in hosts and "*" not in hosts


def test_init_hands_every_writable_volume_to_the_image_user() -> None:
    compose = _compose()
    init = compose["services"]["init-volumes"]
    assert init["user"] == "root"
    uid = _dockerfile_uid()
    assert init["command"][0] == f"{uid}:{uid}"
    handed = set(init["command"][2:])
    for name, svc in compose["services"].items():
        if name in {"postgres", "init-volumes"}:
            continue
        assert "user" not in svc, f"{name} runs as the image's non-root user"
        for volume in svc.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source in compose["volumes"] and mode != ["ro"] and source != "trainer-data":
                assert target in handed, f"{name}: {target} is never handed to uid {uid}"


def test_the_api_reads_its_keys_file_from_a_mounted_volume() -> None:
    api = _compose()["services"]["api"]
    keys_file = api["environment"]["ALLIANCE_RISK_AUTH_API_KEYS_FILE"]
    targets = [volume.split(":")[1] for volume in api["volumes"]]
    assert any(keys_file.startswith(target + "/") for target in targets)


def test_the_api_is_started_by_serve_with_shared_workers() -> None:
    command = _compose()["services"]["api"]["command"]
    assert command[0] == "serve"  # its workers share metrics and rate limits; bare uvicorn's do not
    assert "--workers=2" in command and "--no-bootstrap" in command


def test_the_database_password_is_on_no_command_line() -> None:
    for name, svc in _compose()["services"].items():
        for arg in svc.get("command", []) + svc.get("entrypoint", []):
            assert "POSTGRES_PASSWORD" not in arg, f"{name}: the password in its command line"


def test_the_image_has_the_scripts_the_stack_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for svc in _compose()["services"].values():
        for word in [*svc.get("entrypoint", []), *svc.get("healthcheck", {}).get("test", [])]:
            if word.startswith("/usr/local/bin/"):
                script = word.rsplit("/", 1)[1]
                assert (ROOT / "scripts" / script).is_file()
                assert f"scripts/{script}" in dockerfile, f"the image lacks {script}"


@pytest.fixture(scope="module")
def docker_compose() -> str:
    """Debian's docker-compose (installed by scripts/ensure-tool.sh when missing, as root)."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-tool.sh"), "docker-compose"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    path = shutil.which("docker-compose")
    if done.returncode != 0 or path is None:
        pytest.fail(f"docker-compose is required and could not be installed:\n{done.stderr}")
    return path


def _config(docker_compose: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ROOT)}
    return subprocess.run(
        [docker_compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True, text=True, timeout=120, env={**base, **env}, cwd=ROOT,
    )  # fmt: skip


def test_docker_compose_config_validates_and_refuses_each_missing_secret(
    docker_compose: str,
) -> None:
    done = _config(docker_compose, SECRETS)
    assert done.returncode == 0, done.stderr
    for name in SECRETS:
        done = _config(docker_compose, {k: v for k, v in SECRETS.items() if k != name})
        assert done.returncode != 0 and f"set {name}" in done.stderr, name


def test_init_installs_every_keys_file_for_the_api_alone_and_drops_removed_ones(
    tmp_path: Path,
) -> None:
    # api-keys.json for api_key mode, and a JWT issuer's key set for `jwks_file` in jwt mode.
    source, keys, volume = tmp_path / "keys-in", tmp_path / "keys", tmp_path / "audit"
    source.mkdir()
    (source / "api-keys.json").write_text("{}")
    (source / "jwks.json").write_text('{"keys": []}')
    owner = f"{os.geteuid()}:{os.getegid()}"

    def init() -> None:
        subprocess.run(
            ["sh", str(ROOT / "scripts" / "compose-init.sh"), owner, str(source), str(keys),
             str(volume)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    init()
    for name in ("api-keys.json", "jwks.json"):
        assert (keys / name).read_text() == (source / name).read_text()
        assert (keys / name).stat().st_mode & 0o777 == 0o400
    (source / "jwks.json").unlink()
    init()
    assert sorted(p.name for p in keys.iterdir()) == ["api-keys.json"]
