"""``POST /v1/risk/what-if``: a request -> episodes -> :func:`models.whatif.what_if` -> response.

The same body, scope (``risk:read``), tenancy (another clinic's client looks missing), audit and
error rules as ``POST /v1/risk``; every scenario is scored by the served model's scorer.
A plain ``def`` route: scoring (CPU work) runs in the thread pool.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from models.whatif import WhatIf, what_if
from service.deps import ModelDep, SettingsDep
from service.errors import InvalidRequest, error_responses, request_id_of
from service.routers.jsonbody import OrjsonRoute
from service.routers.risk import BODY_ERRORS, ERRORS, model_ref, one_client
from service.schemas import RiskRequest, WhatIfResponse
from service.security import RiskReader

router = APIRouter(prefix="/v1", tags=["risk"], route_class=OrjsonRoute)


@router.post(
    "/risk/what-if",
    operation_id="riskWhatIf",
    response_model=WhatIfResponse,
    responses={**ERRORS, **BODY_ERRORS, **error_responses(404)},
    summary="How the model's dropout risk would change under plausible changes to the history",
)
def risk_what_if(
    body: RiskRequest,
    request: Request,
    principal: RiskReader,
    model: ModelDep,
    settings: SettingsDep,
) -> WhatIfResponse:
    """The current probability (as POST /v1/risk gives it) and, per scenario (an alliance
    element back at the lower of the client's best so far and the clinic's typical level at
    this appointment, an open rupture repaired, the next appointment attended, the no-shows
    attended), the model's probability for the modified history, the
    change in percentage points and one sentence. These are the model's associations, not
    promises of cause; an improvement the model scores as riskier is marked ``raises_risk``."""
    edge = one_client(body, request, principal, model, settings)
    (outcome,) = what_if(model.scorer, edge.episodes)
    if isinstance(outcome, tuple):
        raise InvalidRequest(edge.request_problems(0, outcome))
    assert isinstance(outcome, WhatIf), "an episode with appointments has a latest one"
    return WhatIfResponse.of(outcome, model_ref(model), request_id_of(request))
