"""The dashboard's static files are served without auth, only the listed ones, with a strict CSP."""

from __future__ import annotations

import falcon.testing
import pytest

from forge.api.app import create_app
from forge.config import Config
from forge.store import open_store


@pytest.fixture
def client(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'forge.db'}")
    yield falcon.testing.TestClient(create_app(Config(data_dir=tmp_path, admin_token="t"), store))
    store.close()


@pytest.mark.parametrize("path,ctype", [("/ui", "text/html"), ("/ui/index.html", "text/html"),
                                        ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")],
                         ids=["root", "index", "js", "css"])
def test_dashboard_files_are_served(client, path: str, ctype: str) -> None:
    """Each dashboard file is served with its type, a CSP and nosniff."""
    r = client.simulate_get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/..%2Fforge.db", "/ui/secret-keys.json"], ids=["unknown", "traversal", "key"])
def test_nothing_else_is_served(client, path: str) -> None:
    """Only the listed files are served: nothing from the data dir, no traversal."""
    assert client.simulate_get(path).status_code == 404


def test_page_carries_no_data_and_needs_the_token_for_api(client) -> None:
    """The page itself holds no records; the API it calls still needs the token."""
    page = client.simulate_get("/ui").text
    assert "Admin token" in page
    assert client.simulate_get("/api/v1/apps").status_code == 401
