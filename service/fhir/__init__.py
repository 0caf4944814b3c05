"""FHIR R4 edge of the service: FHIR resources in, the one scorer, FHIR resources out.

``codes``
    The local CodeSystem (canonical URL, concepts), the instruments' items and the URLs of
    the extensions read.
``settings``
    ``FhirSettings`` (``ALLIANCE_RISK_FHIR_*``): the late-cancel window and reasons.
``inbound``
    Patient, Appointments/Encounters, EpisodeOfCare and alliance Observations or
    QuestionnaireResponses -> :class:`~service.fhir.inbound.FhirEpisode` (a ``RiskRequest``).
``reader``, ``ratings``
    What the mapping shares (issues, references, dates), and the alliance ratings it reads.
``outbound``
    A :class:`~models.results.RiskScore` -> ``RiskAssessment``; problems -> ``OperationOutcome``.
``errors``
    Every error answered on a ``/fhir`` path as an ``OperationOutcome``.
"""
