"""The FHIR resources of a hook call: from its prefetch, else fetched from the EHR's FHIR server.

CDS Hooks 2.0 ("Prefetch Template"): a prefetch key the EHR could not satisfy, or chose not
to, is left out, or holds an OperationOutcome; ``null`` means there is nothing to prefetch (an
empty result). The data a score needs (:func:`required_keys`: the ``patient``, and
``appointments`` or ``encounters``) is fetched from ``fhirServer`` with the
``fhirAuthorization`` bearer token when it was not prefetched, and when it cannot be (no server
named, the server is not one the calling issuer registered, no token, an error or a timeout)
the call is answered ``412 Precondition Failed``, as the specification says. The other keys
(episodes of care, the other visit kind, alliance ratings) are best effort: fetched when the
issuer's server can be used, else, or when that fetch fails, scored without.

Only servers in the calling issuer's ``fhir_servers`` are ever contacted (never a URL from the
request alone: that would let any caller make this service fetch arbitrary addresses, SSRF),
redirects are not followed, ``next`` pages are followed only under the same base, and a fetch
has connect and read timeouts, a page limit and a size limit. The access token is used for
these requests only: never logged, never kept, and the URLs (they name the patient) are
withheld from httpx's own log records (:func:`redact_httpx_logs`, installed by ``create_app``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from service.cds.services import PREFETCH, render

logger = logging.getLogger(__name__)

#: Pages of one search followed at most (``Bundle.link[next]``).
MAX_PAGES = 20
#: Bytes of one FHIR response read at most.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
FHIR_JSON = "application/fhir+json"


class PrefetchUnavailable(Exception):
    """The data a hook needs is neither prefetched nor obtainable: answer 412.

    ``reason`` is a fixed code for the log line (never a URL, a token or a value).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Missing:
    pass


MISSING = _Missing()


def resources_of(value: Any) -> list[dict[str, Any]] | _Missing:
    """The resources one prefetch value holds (a read's resource or a search's Bundle entries);
    MISSING when the EHR reported an error (an OperationOutcome) or sent something else."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return MISSING
    kind = value.get("resourceType")
    if kind == "OperationOutcome" or not isinstance(kind, str):
        return MISSING
    if kind != "Bundle":
        return [value]
    entries = value.get("entry") or []
    if not isinstance(entries, list):
        return MISSING
    out = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
            out.append(resource)
    return out


def split_prefetch(
    prefetch: Mapping[str, Any] | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """(resources found in the prefetch, the prefetch keys still to fetch)."""
    found: list[dict[str, Any]] = []
    missing: list[str] = []
    for key in PREFETCH:
        value = MISSING if prefetch is None or key not in prefetch else prefetch[key]
        got = MISSING if value is MISSING else resources_of(value)
        if isinstance(got, _Missing):
            missing.append(key)
        else:
            found.extend(got)
    return found, missing


#: Prefetch keys a score cannot do without (the visits: either kind will do).
REQUIRED = "patient"
VISITS = ("appointments", "encounters")


def required_keys(prefetch: Mapping[str, Any] | None, missing: Sequence[str]) -> list[str]:
    """Of the ``missing`` keys, those the call needs: the patient, and the visit searches when
    neither was prefetched. The rest are optional (best effort)."""
    needed = [REQUIRED] if REQUIRED in missing else []
    if all(key in missing for key in VISITS):
        needed += list(VISITS)
    return needed


@dataclass(frozen=True)
class FhirFetcher:
    """Reads prefetch templates from one allowed FHIR server with the EHR's access token."""

    base: str
    access_token: str
    connect_timeout_s: float
    read_timeout_s: float

    async def fetch(self, keys: Sequence[str], patient_id: str, *,
                    optional: Sequence[str] = ()) -> list[dict[str, Any]]:  # fmt: skip
        """The resources of each template in ``keys`` and ``optional``, rendered for
        ``patient_id``, read concurrently; PrefetchUnavailable if a read of ``keys`` fails (a
        failed ``optional`` read is left out, its reason logged)."""
        timeout = httpx.Timeout(
            self.read_timeout_s, connect=self.connect_timeout_s, pool=self.connect_timeout_s
        )
        headers = {"Authorization": f"Bearer {self.access_token}", "Accept": FHIR_JSON}
        async with httpx.AsyncClient(
            timeout=timeout, headers=headers, follow_redirects=False, trust_env=False
        ) as client:
            results = await asyncio.gather(
                *(self._read(client, render(PREFETCH[k], patient_id)) for k in keys),
                *(self._optional(client, render(PREFETCH[k], patient_id)) for k in optional),
            )
        return [r for result in results for r in result]

    async def _optional(self, client: httpx.AsyncClient, relative: str) -> list[dict[str, Any]]:
        try:
            return await self._read(client, relative)
        except PrefetchUnavailable as exc:
            logger.info("optional cds prefetch skipped", extra={"fields": {"reason": exc.reason}})
            return []

    async def _read(self, client: httpx.AsyncClient, relative: str) -> list[dict[str, Any]]:
        url: str | None = f"{self.base}/{relative}"
        out: list[dict[str, Any]] = []
        pages = 0
        while url is not None:
            pages += 1
            if pages > MAX_PAGES:
                raise PrefetchUnavailable("too_many_pages")
            body = await self._get(client, url)
            if body is None:  # a read of a resource that does not exist
                return out
            got = resources_of(body)
            if isinstance(got, _Missing):
                raise PrefetchUnavailable("fhir_error")
            out.extend(got)
            url = self._next(body)
        return out

    async def _get(self, client: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
        try:
            async with client.stream("GET", url) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise PrefetchUnavailable(f"fhir_status_{response.status_code}")
                chunks = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise PrefetchUnavailable("fhir_too_large")
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise PrefetchUnavailable("fhir_timeout") from None
        except httpx.HTTPError:
            raise PrefetchUnavailable("fhir_unreachable") from None
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            raise PrefetchUnavailable("fhir_not_json") from None
        if not isinstance(body, dict):
            raise PrefetchUnavailable("fhir_not_json")
        return body

    def _next(self, bundle: Mapping[str, Any]) -> str | None:
        """The next page's URL, only when it lies under the same base (never elsewhere)."""
        if bundle.get("resourceType") != "Bundle":
            return None
        for link in bundle.get("link") or []:
            if isinstance(link, dict) and link.get("relation") == "next":
                url = link.get("url")
                under = self._under_base(url) if isinstance(url, str) else None
                if under is None:
                    raise PrefetchUnavailable("fhir_next_elsewhere")
                return under
        return None

    def _under_base(self, url: str) -> str | None:
        """``url`` as httpx will send it, when its normalised path lies under the base on the
        same origin (a prefix test on the text would let ``<base>/../admin`` out)."""
        try:
            target, base = httpx.URL(url), httpx.URL(self.base + "/")
        except (httpx.InvalidURL, TypeError, ValueError):
            return None
        if any(part in (".", "..") for part in target.path.split("/")):
            return None  # percent-encoded dot segments, which httpx does not resolve
        same_origin = (target.scheme, target.host, target.port) == (
            base.scheme, base.host, base.port
        )  # fmt: skip
        if not same_origin or target.userinfo or not target.path.startswith(base.path):
            return None
        return str(target)


class HttpxUrlFilter(logging.Filter):
    """httpx logs every request's URL at INFO, and a prefetch URL names the patient
    (``Patient/<id>``, ``?patient=<id>``): its records keep their method and status, never
    the URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == 'HTTP Request: %s %s "%s %d %s"' and len(args) == 5:
            record.args = (args[0], "<url withheld>", *args[2:])
        else:
            record.msg, record.args = "httpx record withheld (it may name a patient)", ()
        return True


def redact_httpx_logs() -> None:
    """Put :class:`HttpxUrlFilter` on the ``httpx`` logger, once per process."""
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, HttpxUrlFilter) for f in httpx_logger.filters):
        httpx_logger.addFilter(HttpxUrlFilter())


def allowed_server(requested: str | None, allowed: Sequence[str]) -> str | None:
    """``requested`` (trailing slash removed) when the issuer registered it, else None."""
    if not requested:
        return None
    base = requested.rstrip("/")
    return base if base in allowed else None
