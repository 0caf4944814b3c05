"""Missing prefetch: the service fetches it from the EHR's FHIR server (a loopback one here).

No FHIR server installs from the package registries this project uses (HAPI is Java; npm's
FHIR packages are libraries to build one), so the test starts a small FHIR R4 read/search
server on 127.0.0.1: every resource it serves is validated with ``fhir.resources.R4B`` first,
searches answer ``searchset`` Bundles paged by ``next`` links, and it wants the bearer token
the hook's ``fhirAuthorization`` lends. fhirpy, a third-party FHIR client, reads it first, so
the server is known to speak FHIR as a client expects.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class

from tests.service.conftest import Registry
from tests.service.test_cds_support import (
    PATIENT_VIEW,
    auth_header,
    cds_client,
    cds_token,
    client_resources,
    ehr_key,
    hook_body,
)

ACCESS_TOKEN = "ehr-access-token-for-the-cds-service"
PAGE = 3


class FhirServer:
    """Read (``GET /fhir/<type>/<id>``) and search by ``patient`` (``GET /fhir/<type>?...``)."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        for r in resources:  # only valid R4 resources are served
            get_fhir_model_class(r["resourceType"]).model_validate(r)
        self.resources = resources
        self.requests: list[str] = []
        self.delay_s = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                time.sleep(outer.delay_s)
                if self.headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
                    return self._send(401, {"resourceType": "OperationOutcome", "issue": []})
                status, body = outer.answer(self.path)
                self._send(status, body)

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (the timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        segments = parts.path.removeprefix("/fhir/").split("/")
        if len(segments) == 2:
            kind, rid = segments
            for r in self.resources:
                if r["resourceType"] == kind and r["id"] == rid:
                    return 200, r
            return 404, {"resourceType": "OperationOutcome", "issue": []}
        (kind,) = segments
        query = parse_qs(parts.query)
        patient = query.get("patient", [""])[0]
        hits = [r for r in self.resources if r["resourceType"] == kind
                and self._of(r, patient)]  # fmt: skip
        offset = int(query.get("_offset", ["0"])[0])
        bundle: dict[str, Any] = {
            "resourceType": "Bundle", "type": "searchset", "total": len(hits),
            "entry": [{"resource": r, "search": {"mode": "match"}}
                      for r in hits[offset : offset + PAGE]],
            "link": [{"relation": "self", "url": f"{self.base}/{kind}?{parts.query}"}],
        }  # fmt: skip
        if offset + PAGE < len(hits):
            nxt = f"{self.base}/{kind}?patient={patient}&_offset={offset + PAGE}"
            bundle["link"].append({"relation": "next", "url": nxt})
        get_fhir_model_class("Bundle").model_validate(bundle)
        return 200, bundle

    @staticmethod
    def _of(resource: dict[str, Any], patient: str) -> bool:
        ref = f"Patient/{patient}"
        if resource.get("subject", {}).get("reference") == ref:
            return True
        if resource.get("patient", {}).get("reference") == ref:
            return True
        return any(p.get("actor", {}).get("reference") == ref
                   for p in resource.get("participant", []))  # fmt: skip

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def key():
    return ehr_key()


@pytest.fixture
def setup(registry: Registry, tmp_path: Path, key) -> Iterator[tuple[TestClient, FhirServer, Any]]:
    # The app must know the server's address (the issuer's fhir_servers) and the server the
    # model's instrument profile: start the server empty, fill it once the app is up.
    server = FhirServer([])
    try:
        for client in cds_client(registry, tmp_path / "cds", key, fhir_servers=[server.base],
                                 cds_fetch_read_timeout_s=0.5):  # fmt: skip
            profile = client.app.state.store.current.scorer.profile
            cid = str(registry.cohort.clients["client_id"].iloc[3])
            server.resources = client_resources(registry, cid, profile)
            for r in server.resources:
                get_fhir_model_class(r["resourceType"]).model_validate(r)
            yield client, server, key
    finally:
        server.close()


def _lend(body: dict[str, Any], server: FhirServer) -> dict[str, Any]:
    body["fhirServer"] = server.base
    body["fhirAuthorization"] = {"access_token": ACCESS_TOKEN, "token_type": "Bearer",
                                 "expires_in": 300, "scope": "system/Patient.rs",
                                 "subject": "alliance-risk"}  # fmt: skip
    return body


def test_a_fhir_client_library_reads_the_loopback_server(setup) -> None:
    from fhirpy import SyncFHIRClient

    _, server, _ = setup
    fhir = SyncFHIRClient(server.base, authorization=f"Bearer {ACCESS_TOKEN}")
    patient = next(r for r in server.resources if r["resourceType"] == "Patient")
    assert fhir.reference("Patient", patient["id"]).to_resource()["id"] == patient["id"]
    appointments = fhir.resources("Appointment").search(patient=patient["id"]).fetch_all()
    expected = sum(r["resourceType"] == "Appointment" for r in server.resources)
    assert expected > PAGE and len(appointments) == expected  # the next links were followed


def test_missing_prefetch_is_fetched_and_gives_the_same_cards(setup, registry) -> None:
    client, server, key = setup
    with_prefetch = hook_body(server.resources)
    expected = client.post(f"/cds-services/{PATIENT_VIEW}", json=with_prefetch,
                           headers=auth_header(cds_token(key)))  # fmt: skip
    assert expected.status_code == 200, expected.text
    body = _lend(hook_body(server.resources), server)
    del body["prefetch"]
    got = client.post(f"/cds-services/{PATIENT_VIEW}", json=body,
                      headers=auth_header(cds_token(key)))  # fmt: skip
    assert got.status_code == 200, got.text
    strip = [{k: v for k, v in c.items() if k != "uuid"} for c in expected.json()["cards"]]
    assert [{k: v for k, v in c.items() if k != "uuid"} for c in got.json()["cards"]] == strip
    assert any("_offset=" in path for path in server.requests)  # paged searches followed
    # Only the missing keys are fetched.
    server.requests.clear()
    body = _lend(hook_body(server.resources), server)
    del body["prefetch"]["appointments"]
    assert client.post(f"/cds-services/{PATIENT_VIEW}", json=body,
                       headers=auth_header(cds_token(key))).status_code == 200  # fmt: skip
    assert server.requests and all(p.startswith("/fhir/Appointment?") for p in server.requests)


def test_a_refused_or_slow_fhir_server_is_412(setup) -> None:
    client, server, key = setup
    body = _lend(hook_body(server.resources), server)
    del body["prefetch"]
    body["fhirAuthorization"]["access_token"] = "wrong"
    refused = client.post(f"/cds-services/{PATIENT_VIEW}", json=body,
                          headers=auth_header(cds_token(key)))  # fmt: skip
    assert refused.status_code == 412
    assert "wrong" not in refused.text
    body = _lend(hook_body(server.resources), server)
    del body["prefetch"]
    server.delay_s = 1.5  # past the 0.5 s read timeout
    started = time.monotonic()
    slow = client.post(f"/cds-services/{PATIENT_VIEW}", json=body,
                       headers=auth_header(cds_token(key)))  # fmt: skip
    assert slow.status_code == 412
    assert time.monotonic() - started < 1.4
    server.delay_s = 0.0


def test_fetch_urls_never_reach_the_logs(setup, caplog: pytest.LogCaptureFixture) -> None:
    """httpx logs each request's URL at INFO, and the URL names the patient: an embedding
    process that turns those loggers up must still not see it."""
    client, server, key = setup
    body = _lend(hook_body(server.resources), server)
    del body["prefetch"]
    patient = body["context"]["patientId"]
    with caplog.at_level(logging.DEBUG):
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        try:
            response = client.post(f"/cds-services/{PATIENT_VIEW}", json=body,
                                   headers=auth_header(cds_token(key)))  # fmt: skip
        finally:
            for name in ("httpx", "httpcore"):
                logging.getLogger(name).setLevel(logging.NOTSET)
    assert response.status_code == 200
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "httpx" in logged  # the library did log its requests
    assert patient not in logged and ACCESS_TOKEN not in logged


def test_a_failing_optional_fetch_is_left_out(setup) -> None:
    """Best effort for the optional keys: the episodes of care could not be read, the patient's
    appointments could, so the card comes (this was a 412 before)."""
    client, server, key = setup
    answer = server.answer
    failing = (500, {"resourceType": "OperationOutcome", "issue": []})
    server.answer = lambda path: failing if path.startswith("/fhir/EpisodeOfCare") else answer(path)  # type: ignore[method-assign]
    body = _lend(hook_body(server.resources), server)
    del body["prefetch"]["episodesOfCare"]
    del body["prefetch"]["appointments"]
    server.requests.clear()
    got = client.post(f"/cds-services/{PATIENT_VIEW}", json=body,
                      headers=auth_header(cds_token(key)))  # fmt: skip
    assert got.status_code == 200, got.text
    fetched = {path.split("?")[0] for path in server.requests}
    assert fetched == {"/fhir/EpisodeOfCare", "/fhir/Appointment"}
