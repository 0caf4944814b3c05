"""``GET /v1/clinics/{clinic_id}/caseload``: a clinic's open episodes, highest risk first, for
dashboards that poll.

The page comes from :func:`service.store.caseload.caseload_page` (the dashboard's caseload table
reads the same function). Every answer carries a strong ``ETag``, ``Cache-Control: private,
no-cache`` (a shared cache must not keep a clinic's list; a browser revalidates each time) and
``Vary: Authorization``; a poll whose ``If-None-Match`` still matches is a 304 with no body, at
the cost of opening its cursor and one primary-key read
(:func:`~service.store.caseload.caseload_etag`).

Tenancy: the path's clinic must be the credential's; any other clinic is a 404, whether or not
it exists. ``next_cursor`` is opaque and sealed for the clinic it was issued to
(:mod:`service.store.cursors`); a changed cursor, another clinic's, one sealed before the
audit key rotated, or one longer than any issued is a 400 (:data:`~service.errors.BAD_CURSOR`,
naming ``cursor``), with or without ``If-None-Match``. Every request is audited; a 200 notes
each client it lists (as a batch does), a 304 lists none.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from service.auth import Principal
from service.errors import bad_cursor, cursor_error_responses, error_responses
from service.routers.jsonbody import OrjsonRoute
from service.schemas import ID_MAX_LENGTH
from service.security import note_clients, same_clinic, scoped
from service.store.caseload import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    CaseloadFilters,
    CaseloadPage,
    CursorError,
    caseload_etag,
    caseload_page,
)
from service.store.deps import ClientStoreDep, request_cursor_seal
from service.store_schemas import UtcInstant

router = APIRouter(prefix="/v1", tags=["caseload"], route_class=OrjsonRoute)

CaseloadReader = Annotated[Principal, Depends(scoped("clients:read"))]
CLINIC_NOT_FOUND = "clinic not found"
#: Every answer's caching headers (RFC 9111: private, revalidate every time; per credential).
CACHING = {"Cache-Control": "private, no-cache", "Vary": "Authorization"}


class CaseloadItem(BaseModel):
    """One open episode of the caseload."""

    client_id: str
    therapist_id: str
    band: Literal["low", "moderate", "high"] | None = Field(
        description="Risk band of the latest score (null: not scored yet)."
    )
    probability: float | None = Field(
        description="Calibrated dropout probability of the latest score (null: not scored yet)."
    )
    change_since_last_week: float | None = Field(
        description="probability minus the latest score at or before week_cutoff (null: no "
        "score that old)."
    )
    top_driver: str | None = Field(
        description="The main reason: the strongest driver of the latest score that raises "
        'the risk, in clinician language, or "No factor raises the risk" when every driver '
        "lowers it (null: not scored yet)."
    )
    model_version: str | None = Field(description="The model version that scored the row.")
    scored_at: datetime | None = Field(description="When the latest score was computed (UTC).")


class CaseloadResponse(BaseModel):
    """A page of the clinic's open episodes: probability descending, unscored ones last."""

    clinic_id: str
    items: list[CaseloadItem]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )
    limit: int
    week_cutoff: datetime = Field(
        description="The change is measured against the latest score at or before this time "
        "(the start, UTC, of the day seven days ago)."
    )

    @classmethod
    def of(cls, page: CaseloadPage) -> CaseloadResponse:
        # One validation of the whole page in pydantic-core: for 1,000 rows about a third of
        # the CPU of a Python model_construct per row.
        return cls.model_validate(
            {
                "clinic_id": page.clinic_id,
                "items": [vars(row) for row in page.rows],
                "next_cursor": page.next_cursor,
                "limit": page.limit,
                "week_cutoff": page.week_cutoff,
            }
        )


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 section 13.1.2: ``*`` or any listed tag equal to ``etag`` under the weak
    comparison (a ``W/`` prefix ignored)."""
    if if_none_match is None:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


@router.get(
    "/clinics/{clinic_id}/caseload",
    operation_id="getCaseload",
    response_model=CaseloadResponse,
    responses={
        **error_responses(401, 403, 404, 422, 429, 500, 503, 504),
        **cursor_error_responses(),
        304: {"description": "Not modified: the If-None-Match tag is still current (no body)."},
    },
    summary="A clinic's open episodes sorted by risk, with ETag polling",
)
def caseload(
    clinic_id: str,
    request: Request,
    response: Response,
    principal: CaseloadReader,
    store: ClientStoreDep,
    therapist_id: Annotated[
        str | None, Query(max_length=ID_MAX_LENGTH, description="Only this therapist's.")
    ] = None,
    band: Annotated[
        Literal["low", "moderate", "high"] | None, Query(description="Only this risk band.")
    ] = None,
    changed_since: Annotated[
        UtcInstant | None,
        Query(description="Only episodes whose data or score changed at or after this time."),
    ] = None,
    # No max_length: a cursor too long is refused as every other bad cursor is (400, not 422).
    cursor: Annotated[str | None, Query(description="next_cursor of a page (opaque).")] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Rows per page (at most {MAX_LIMIT}).")
    ] = DEFAULT_LIMIT,
    if_none_match: Annotated[str | None, Header()] = None,
) -> CaseloadResponse | Response:
    """Open episodes, probability descending (ties by the store's row, newest first), then
    those not scored yet. Each row: band, probability, the change since last week, the top
    driver, and the model version that scored it. Keyset pages: follow ``next_cursor``."""
    if not same_clinic(principal, clinic_id):
        raise HTTPException(404, CLINIC_NOT_FOUND)
    filters = CaseloadFilters(therapist_id, band, changed_since)
    now = datetime.now(UTC)
    seal = request_cursor_seal(request)
    with store.read() as conn:
        # The tag first (it opens the cursor: a bad one is a 400 whatever If-None-Match says),
        # then the rows in the same transaction: the body is never older than its tag.
        try:
            etag = caseload_etag(conn, clinic_id, filters, cursor, limit, now=now, seal=seal)
        except CursorError:
            raise bad_cursor("cursor") from None
        if matches(if_none_match, etag):
            return Response(status_code=304, headers={"ETag": etag, **CACHING})
        page = caseload_page(conn, clinic_id, filters, cursor, limit, now=now, seal=seal)
    note_clients(request, clinic_id, [row.client_id for row in page.rows], status=200)
    response.headers.update({"ETag": etag, **CACHING})
    return CaseloadResponse.of(page)
