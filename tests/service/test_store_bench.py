"""The benchmarks configure the service only through settings that exist."""

import re
from pathlib import Path

from pydantic_settings import BaseSettings

from service.audit_log import AuditSettings
from service.auth.settings import AuthSettings
from service.fhir.settings import FhirSettings
from service.limits import LimitSettings
from service.settings import ServiceSettings

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
ALL_SETTINGS: list[type[BaseSettings]] = [
    ServiceSettings, AuthSettings, AuditSettings, LimitSettings, FhirSettings,
]  # fmt: skip


def test_every_setting_a_benchmark_sets_exists() -> None:
    # Settings ignore unknown ALLIANCE_RISK_* names, so a removed one would silently do nothing
    # (bench_cds set ALLIANCE_RISK_CDS_FEEDBACK_PATH long after feedback moved to the store).
    known = {
        f"{cls.model_config.get('env_prefix', '')}{name}".upper()
        for cls in ALL_SETTINGS
        for name in cls.model_fields
    }
    used = {
        (path.name, name)
        for path in BENCHMARKS.glob("*.py")
        for name in re.findall(r"\"(ALLIANCE_RISK_[A-Z0-9_]+)\"", path.read_text())
    }
    assert used, "no benchmark sets any setting: the pattern is wrong"
    assert sorted(u for u in used if u[1] not in known) == []
