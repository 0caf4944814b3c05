"""The CDS services this app offers, and the FHIR data each asks the EHR to prefetch.

Two services, one per hook of CDS Hooks 2.0 that opens a client's record: ``patient-view``
(the chart is opened) and ``appointment-book`` (an appointment is being booked). Both read the
same resources, the ones the FHIR edge maps into an episode (service/fhir/inbound.py): the
Patient, their Appointments, Encounters and EpisodesOfCare (the intake), and the alliance ratings as Observations coded in
the local CodeSystem or as QuestionnaireResponses.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.cds.schemas import Discovery, ServiceDescription
from service.fhir.codes import CODE_SYSTEM

PATIENT = "{{context.patientId}}"

#: Prefetch key -> FHIR read or search (prefetch tokens in ``{{ }}``). A search by ``system|``
#: matches every code of the local CodeSystem (FHIR R4 search, token parameters).
PREFETCH: dict[str, str] = {
    "patient": f"Patient/{PATIENT}",
    "appointments": f"Appointment?patient={PATIENT}",
    "encounters": f"Encounter?patient={PATIENT}",
    "episodesOfCare": f"EpisodeOfCare?patient={PATIENT}",
    "allianceObservations": f"Observation?patient={PATIENT}&code={CODE_SYSTEM}|",
    "allianceQuestionnaires": f"QuestionnaireResponse?patient={PATIENT}",
}

USAGE = (
    "Needs a signed JWT (CDS Hooks 2.0) from an issuer registered with this service for one "
    "clinic. Intended use: prompting an alliance check-in or outreach; never for discharge or "
    "rationing care."
)


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str


SERVICES: dict[str, CdsService] = {
    s.id: s
    for s in (
        CdsService(
            id="alliance-risk-patient-view",
            hook="patient-view",
            title="Psychotherapy dropout risk",
            description="When a client's chart is opened: the calibrated risk that the client "
            "drops out of therapy, what drives it (alliance elements, attendance, engagement) "
            "and where to focus the alliance.",
        ),
        CdsService(
            id="alliance-risk-appointment-book",
            hook="appointment-book",
            title="Psychotherapy dropout risk at booking",
            description="When an appointment is booked for a client: the same risk card, so a "
            "check-in can be planned into the next session.",
        ),
    )
}


def discovery() -> Discovery:
    """The discovery document (``GET /cds-services``)."""
    return Discovery(
        services=[
            ServiceDescription(
                hook=s.hook,
                title=s.title,
                description=s.description,
                id=s.id,
                prefetch=dict(PREFETCH),
                usageRequirements=USAGE,
            )
            for s in SERVICES.values()
        ]
    )


def render(template: str, patient_id: str) -> str:
    """A prefetch template with the patient's id in place (the only token ours use)."""
    return template.replace(PATIENT, patient_id)
