"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright against
``alliance-risk serve`` on 127.0.0.1 with a SQLite client store seeded through the store's own
API (``POST /v1/clients/{id}/sessions``, which scores every post).

The test signs in (a wrong token first), reads the caseload, sorts and filters it with the
keyboard-reachable links and form, opens a client, checks what is shown, signs out, and saves
screenshots at 1280x800 and 768x1024 under its output folder (``DASHBOARD_SCREENSHOTS`` names
another folder: ``scripts/dashboard-screenshot.sh`` uses it for the README's pictures).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.service.conftest import TEST_CLINIC, Registry, bearer
from tests.service.helpers import SENT_CLIENT_IDS, request_for
from tests.service.serving import serving

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
OTHER_CLINIC = "clinic-other"
THERAPISTS = ("t-ames", "t-baker", "t-chen")
#: Chunks each client's appointments are posted in: one stored score per chunk (the trend).
CHUNKS = 3


def _ensure_chromium() -> None:
    if not Path(CHROMIUM).exists():  # a fresh CI machine: Debian's package, as the README says
        subprocess.run([str(ROOT / "scripts" / "ensure-tool.sh"), "chromium"], check=True)


def _seed(url: str, registry: Registry, key_dir: Path, store: Path) -> tuple[dict[str, str], str]:
    """Post a dozen simulated clients of TEST_CLINIC and one of another clinic, in chunks;
    return TEST_CLINIC's client id -> therapist, and the other clinic's client id. The first score of each is moved 10 days back, so the
    caseload has a change since last week to show."""
    cohort = registry.cohort
    counts = cohort.sessions.groupby("client_id").size()
    ids = [c for c in counts[counts >= 8].index[:13]]
    therapist_of = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        for i, cid in enumerate(ids):
            clinic = OTHER_CLINIC if i == len(ids) - 1 else TEST_CLINIC
            body = request_for(cohort, cid, clinic=clinic)
            SENT_CLIENT_IDS.add(cid)
            therapist = THERAPISTS[i % len(THERAPISTS)]
            client = {"therapist_id": therapist, "intake_date": body["intake_date"],
                      "age": body.get("age")}  # fmt: skip
            sessions = body["sessions"]
            step = -(-len(sessions) // CHUNKS)
            for start in range(0, len(sessions), step):
                answer = http.post(
                    f"/v1/clients/{cid}/sessions",
                    json={"client": client, "sessions": sessions[start : start + step]},
                    headers=bearer(key_dir, clinic, ("clients:read", "clients:write")),
                )
                assert answer.status_code in (200, 201), answer.text
            if clinic == TEST_CLINIC:
                therapist_of[cid] = therapist
            else:
                other = cid
    with sqlite3.connect(store) as db:
        db.execute(
            "UPDATE risk_scores SET scored_at = datetime(scored_at, '-10 days') WHERE id IN "
            "(SELECT min(id) FROM risk_scores GROUP BY episode_id)"
        )
    return therapist_of, other


def _probabilities(page) -> list[float]:
    cells = page.locator("table.caseload tbody td.num").all_inner_texts()
    return [float(c.rstrip("%")) for c in cells]


def _no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_dashboard_in_chromium(registry: Registry, dev_key_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    _ensure_chromium()
    shots = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    store = tmp_path / "store.db"
    env = {"ALLIANCE_RISK_STORE_URL": f"sqlite:///{store}"}
    workdir = tmp_path / "serve"
    with serving(registry, workdir, dev_key_dir, env=env) as url:
        therapist_of, other = _seed(url, registry, dev_key_dir, store)
        token = bearer(dev_key_dir, TEST_CLINIC, ("clients:read",))["Authorization"].split()[1]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                page = context.new_page()
                console: list[str] = []
                page.on("console", lambda m: console.append(m.text))

                # Not signed in: the caseload sends the browser to the sign-in page.
                page.goto(f"{url}/dashboard/")
                expect(page).to_have_url(f"{url}/dashboard/sign-in")
                # The skip link comes first with the keyboard.
                page.keyboard.press("Tab")
                assert page.evaluate("document.activeElement.textContent") == "Skip to content"

                # A wrong token: one plain message, no session.
                page.fill("#credential", token[:-4] + "AAAA")
                page.click("button[type=submit]")
                expect(page.get_by_role("alert")).to_have_text(re.compile("Sign-in failed"))
                assert not context.cookies()

                page.fill("#credential", token)
                page.click("button[type=submit]")
                expect(page).to_have_url(f"{url}/dashboard/")
                (cookie,) = context.cookies()
                assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
                assert token not in cookie["value"] and cookie["path"] == "/dashboard"

                # The caseload: this clinic's open episodes, highest risk first.
                rows = page.locator("table.caseload tbody tr")
                expect(rows).to_have_count(len(therapist_of))
                shown = page.locator("table.caseload tbody th a").all_inner_texts()
                assert set(shown) == set(therapist_of)  # the other clinic's client is absent
                risk = _probabilities(page)
                assert risk == sorted(risk, reverse=True)
                bands = page.locator("td.band").all_inner_texts()
                assert {b.strip() for b in bands} <= {"High", "Moderate", "Low"}
                assert page.locator("td.band svg").count() == len(therapist_of)  # a shape each
                assert page.locator("svg.sparkline[role=img]").count() == len(therapist_of)
                assert page.get_by_text(re.compile(r"(up|down) \d+ points|no change")).count()
                expect(page.locator("p.meta")).to_contain_text("model version")
                assert _no_horizontal_scroll(page)
                page.screenshot(path=shots / "dashboard-caseload.png", full_page=True)

                # Sort by therapist with the heading link (keyboard: focus it, press Enter).
                page.get_by_role("link", name=re.compile("^Therapist")).focus()
                page.keyboard.press("Enter")
                expect(page.locator("th[aria-sort=ascending]")).to_contain_text("Therapist")
                column = page.locator("table.caseload tbody td:nth-child(7)").all_inner_texts()
                assert column == sorted(column)
                # And back: highest risk first.
                page.get_by_role("link", name=re.compile("^Risk")).click()
                assert _probabilities(page) == sorted(_probabilities(page), reverse=True)

                # Filter by therapist and band with the form.
                page.select_option("#therapist", THERAPISTS[1])
                page.click("form.filters button")
                mine = [c for c, t in therapist_of.items() if t == THERAPISTS[1]]
                expect(rows).to_have_count(len(mine))
                expect(page.locator("table.caseload caption")).to_contain_text(THERAPISTS[1])
                band = bands[0].strip().lower()
                page.select_option("#therapist", "")
                page.select_option("#band", band)
                page.click("form.filters button")
                filtered = page.locator("td.band").all_inner_texts()
                assert filtered and {b.strip().lower() for b in filtered} == {band}

                # A client: trajectory by element with ruptures, attendance, drivers.
                page.goto(f"{url}/dashboard/")
                first = page.locator("table.caseload tbody th a").first
                client_id = first.inner_text()
                first.click()
                expect(page.locator("h1")).to_have_text(f"Client {client_id}")
                expect(page.locator(".summary")).to_contain_text("Model version")
                assert page.locator("ol.drivers li").count() >= 1
                trajectory = page.locator("svg.trajectory")
                assert trajectory.get_attribute("role") == "img"
                assert trajectory.locator(".panel-title").count() == 6
                listed = page.locator("ul.ruptures li").all_inner_texts()
                # "X: rupture at session 4" or "X: ruptures at sessions 3, 5 and 8".
                for text in listed:
                    assert re.fullmatch(
                        r".+: (rupture at session \d+|ruptures at sessions \d+(, \d+)* and \d+)",
                        text,
                    ), text
                marks = sum(len(re.findall(r"\d+", t.split(":", 1)[1])) for t in listed)
                assert trajectory.locator("path.rupture").count() == marks
                expect(page.locator("ul.legend")).to_contain_text("no-show")
                assert page.locator("svg.attendance[role=img]").count() == 1
                assert _no_horizontal_scroll(page)
                page.screenshot(path=shots / "dashboard-client.png", full_page=True)

                # A tablet: both pages without sideways scrolling.
                page.set_viewport_size({"width": 768, "height": 1024})
                assert _no_horizontal_scroll(page)
                page.screenshot(path=shots / "dashboard-client-tablet.png", full_page=True)
                page.goto(f"{url}/dashboard/")
                assert _no_horizontal_scroll(page)
                page.screenshot(path=shots / "dashboard-caseload-tablet.png", full_page=True)

                # Another clinic's client looks missing.
                answer = page.goto(f"{url}/dashboard/clients/{other}")
                assert answer is not None and answer.status == 404

                # Sign out (a CSRF-checked form), then the pages need signing in again.
                page.goto(f"{url}/dashboard/")
                page.get_by_role("button", name="Sign out").click()
                expect(page).to_have_url(f"{url}/dashboard/sign-in")
                assert not context.cookies()
                # Nothing the Content-Security-Policy blocked (a blocked style or image logs).
                assert not [m for m in console if "Content Security Policy" in m]
                assert page.evaluate("getComputedStyle(document.body).margin") == "0px"
            finally:
                browser.close()
        serve_log = (workdir / "serve.log").read_text()
        audit = (workdir / "audit.jsonl").read_text()
    assert not [c for c in [*therapist_of, other] if c in serve_log + audit]
    for action in ("dashboard.sign_in", "dashboard.caseload", "dashboard.client",
                   "dashboard.sign_out"):  # fmt: skip
        assert f'"action":"{action}"' in audit
