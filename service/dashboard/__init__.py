"""The dashboard for clinicians (issue 21): server-rendered pages under ``/dashboard/``.

- :mod:`~service.dashboard.routes`: sign-in, the caseload, a client (the router).
- :mod:`~service.dashboard.session`: the signed session cookie and CSRF checks.
- :mod:`~service.dashboard.source`: reads of the client store for the pages.
- :mod:`~service.dashboard.views`: view models (records in, what the templates print out).
- :mod:`~service.dashboard.charts`: inline SVG charts (sparkline, trajectory, attendance).
- :mod:`~service.dashboard.ruptures`: rupture marks by session, from the features' own rule.

``templates/`` and ``static/`` ship inside the package (no CDN: clinic networks may have no
internet).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def install_dashboard(app: FastAPI) -> None:
    """Add the dashboard's routes and its stylesheet to ``app``."""
    from service.dashboard.routes import STATIC, STATIC_DIR, router

    app.include_router(router)
    # check_dir off: an install without the package data still serves the API (pages fail alone).
    app.mount(STATIC, StaticFiles(directory=STATIC_DIR, check_dir=False), name="dashboard-static")
