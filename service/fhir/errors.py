"""Every error on a ``/fhir`` path as an ``OperationOutcome`` (``application/fhir+json``).

The service answers errors as RFC 9457 problem details, from many places: authentication and
scopes (401, 403), rate limits (429), the body-size and timeout middleware (413, 504), the JSON
body reader (400, 415, 422), the audit trail (503) and the last-resort 500. A FHIR client
expects an OperationOutcome from all of them. This outermost ASGI middleware rewrites a problem
body sent on a ``/fhir`` path into one, with the same status and headers; the problem's fixed
``detail`` becomes the issue's ``diagnostics`` (problem bodies never carry submitted values, so
neither does the outcome). The FHIR route answers its own 422s as OperationOutcomes already.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.errors import PROBLEM_JSON
from service.fhir.inbound import FhirIssue
from service.fhir.outbound import FHIR_JSON, ISSUE_TYPE, operation_outcome
from service.fhir.reader import FhirInputError

FHIR_PREFIX = "/fhir"
_NO_STORE = (b"cache-control", b"no-store")


def is_fhir_path(path: str) -> bool:
    return path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")


def outcome_of_problem(problem: Any, status: int) -> dict[str, Any]:
    """A problem-details body as an OperationOutcome: ``detail`` and each listed error's
    ``reason`` (their ``loc`` are /v1 request paths, which name nothing in a FHIR body), then
    ``more_errors`` as the closing count of the issues left out."""
    code = ISSUE_TYPE.get(status, "processing")
    issues = []
    if isinstance(problem, dict):
        if isinstance(problem.get("detail"), str):
            issues.append(FhirIssue("", code, problem["detail"]))
        errors = problem.get("errors")
        for error in errors if isinstance(errors, list) else ():
            if isinstance(error, dict) and isinstance(error.get("reason"), str):
                issues.append(FhirIssue("", code, error["reason"]))
        more = problem.get("more_errors")
        if issues and isinstance(more, int) and not isinstance(more, bool) and more > 0:
            issues = FhirInputError(issues, more).issues
    return operation_outcome(issues, status=status)


class FhirErrorMiddleware:
    """Rewrites ``application/problem+json`` responses under ``/fhir`` as OperationOutcomes,
    and marks every ``/fhir`` response ``Cache-Control: no-store`` (they carry client data)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not is_fhir_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def rewrite(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = [
                    h for h in message.get("headers", []) if h[0].lower() != b"cache-control"
                ]
                headers.append(_NO_STORE)
                message = {**message, "headers": headers}
                if _content_type(headers) == PROBLEM_JSON:
                    start = message  # held until the whole (small) problem body is in
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                head, body = _as_outcome(start, b"".join(chunks))
                await send(head)
                await send(body)
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def _content_type(headers: list[tuple[bytes, bytes]]) -> str:
    for key, value in headers:
        if key.lower() == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return ""


def _as_outcome(start: dict[str, Any], body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    status = int(start["status"])
    try:
        problem = orjson.loads(body)
    except orjson.JSONDecodeError:
        problem = None
    out = orjson.dumps(outcome_of_problem(problem, status))
    headers = [h for h in start["headers"]
               if h[0].lower() not in (b"content-type", b"content-length")]  # fmt: skip
    headers += [(b"content-type", FHIR_JSON.encode()), (b"content-length", str(len(out)).encode())]
    return {**start, "headers": headers}, {"type": "http.response.body", "body": out}
