"""Settings of the FHIR edge: one pydantic-settings object, prefix ``ALLIANCE_RISK_FHIR_``."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.fhir.codes import CODE_SYSTEM, LATE_CANCEL


class FhirSettings(BaseSettings):
    """How FHIR resources map onto the data contract where a clinic's practice decides."""

    model_config = SettingsConfigDict(env_prefix="ALLIANCE_RISK_FHIR_", extra="ignore")

    late_cancel_hours: float = Field(
        24.0,
        ge=0,
        le=24 * 14,
        description="A client's cancellation less than this many hours before the appointment's "
        "start is a late cancel (needs the cancellation time: the R5 cross-version extension "
        "Appointment.cancellationDate). 0: only the late-cancel reason codes count.",
    )
    late_cancel_reasons: tuple[str, ...] = Field(
        (f"{CODE_SYSTEM}|{LATE_CANCEL}",),
        description="Appointment.cancelationReason codings, as 'system|code', that make a "
        "cancellation a late cancel whatever its time.",
    )

    @field_validator("late_cancel_reasons")
    @classmethod
    def _system_and_code(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for token in value:
            system, sep, code = token.partition("|")
            if not (sep and system and code):
                raise ValueError("each late-cancel reason is written 'system|code'")
        return value

    def is_late_cancel_reason(self, system: str | None, code: str | None) -> bool:
        return f"{system}|{code}" in self.late_cancel_reasons
