"""CDS Hooks 2.0 edge of the service: hook calls in, the one scorer, cards out.

``services``
    The two services (``patient-view``, ``appointment-book``), their prefetch templates and
    the discovery document.
``schemas``
    The hook request, cards, discovery and feedback bodies (the spec's field names).
``auth``
    The EHR's signed JWT per the spec, through the service's one authenticator.
``prefetch``
    The FHIR resources of a call: its prefetch, else fetched from an allowed ``fhirServer``.
``cards``
    A :class:`~models.results.RiskScore` (and what-if falls) as a card.
``feedback``
    Card feedback kept as JSON lines.
``cors``
    CORS confined to ``/cds-services`` for browser-hosted EHRs.

The routes are in :mod:`service.routers.cds`; the FHIR -> episode mapping is the FHIR edge's
(:mod:`service.fhir.inbound`), never a second one.
"""
