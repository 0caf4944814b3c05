"""CORS on the ``/cds-services`` paths only, for browser-hosted EHRs and the CDS Hooks sandbox.

CDS Hooks 2.0 ("Cross-Origin Resource Sharing"): browser-based CDS clients need CORS, and the
spec points to OWASP's guidance, which this follows: an allowlist of exact origins
(``cds_cors_origins``; ``*`` is refused by the settings), no credentials mode (the calls carry
a bearer JWT, never cookies), and only the methods and headers the hooks use. Starlette's
``CORSMiddleware`` does the work; this only confines it to the CDS paths, so the scoring API
keeps its own allowlist (``ALLIANCE_RISK_LIMIT_CORS_ORIGINS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.middleware.cors import CORSMiddleware

PREFIX = "/cds-services"


class CdsCorsMiddleware:
    def __init__(self, app: Any, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID"],
            allow_credentials=False,
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == PREFIX or path.startswith(PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
