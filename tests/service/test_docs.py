"""/docs and /redoc work on a network without internet: every asset they load is the app's own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from tests.service.conftest import Registry, security_settings
from tests.service.serving import CHAMPION

#: Every URL a page names: attributes, JavaScript string literals and CSS url(...).
URL = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_the_apps_own_assets(api: TestClient, page: str) -> None:
    r = api.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"(?i)\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html), html
    urls = {a or b for a, b in URL.findall(html)}
    assert "/openapi.json" in urls
    assert any(u.endswith(".js") for u in urls)
    for url in urls:
        assert url.startswith("/"), url
        got = api.get(url)
        assert got.status_code == 200, url
        assert len(got.content) > 1000, url


def test_docs_assets_are_an_allowlist(api: TestClient) -> None:
    assert api.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    for name in ("core.py", "..%2F__init__.py", "missing.js"):
        assert api.get(f"/docs/assets/{name}").status_code == 404


def test_docs_can_be_turned_off(registry: Registry, tmp_path: Path, dev_key_dir: Path) -> None:
    settings = ServiceSettings(model_uri=CHAMPION, tracking_uri=registry.uri, poll_interval_s=0,
                               docs_enabled=False)  # fmt: skip
    app = create_app(
        settings, configure_logs=False, **security_settings(dev_key_dir, tmp_path / "audit")
    )
    with TestClient(app) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css"):
            assert client.get(path).status_code == 404, path
