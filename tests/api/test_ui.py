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


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/..%2Fforge.db", "/ui/secret-keys.json", "/ui/package.json",
                                  "/ui/vendor", "/ui/npm"], ids=["unknown", "traversal", "key", "npm-package", "vendor-dir", "npm-dir"])
def test_nothing_else_is_served(client, path: str) -> None:
    """Only the listed files are served: nothing from the data dir, no traversal."""
    assert client.simulate_get(path).status_code == 404


def test_page_carries_no_data_and_needs_the_token_for_api(client) -> None:
    """The page itself holds no records; the API it calls still needs the token."""
    page = client.simulate_get("/ui").text
    assert "Admin token" in page
    assert client.simulate_get("/api/v1/apps").status_code == 401


def test_one_time_sign_in_link(tmp_path) -> None:
    """The code forge up prints trades once for the admin token; a wrong, reused or expired
    code is 401 with the same message, and nothing is left in the data dir after use."""
    from forge import signin
    from forge.clock import FakeClock

    clock = FakeClock()
    store = open_store(f"sqlite:///{tmp_path / 'forge.db'}")
    client = falcon.testing.TestClient(create_app(Config(data_dir=tmp_path, admin_token="the-token"), store, clock))
    try:
        code = signin.mint(tmp_path, clock)
        assert oct((tmp_path / signin.FILE).stat().st_mode & 0o777) == "0o600"
        assert code not in (tmp_path / signin.FILE).read_text()  # only its digest is kept
        wrong = client.simulate_post("/api/v1/ui/signin", json={"code": code[:-1] + ("y" if code.endswith("x") else "x")})  # never the code itself
        assert wrong.status_code == 401 and (tmp_path / signin.FILE).exists()
        ok = client.simulate_post("/api/v1/ui/signin", json={"code": code})
        assert ok.status_code == 200 and ok.json == {"token": "the-token"}
        again = client.simulate_post("/api/v1/ui/signin", json={"code": code})
        assert again.status_code == 401 and again.json["message"] == wrong.json["message"]
        assert not (tmp_path / signin.FILE).exists()
        late = signin.mint(tmp_path, clock)
        clock.advance(signin.TTL_SECONDS + 1)
        assert client.simulate_post("/api/v1/ui/signin", json={"code": late}).status_code == 401
        assert client.simulate_post("/api/v1/ui/signin", json={"code": ""}).status_code == 400
    finally:
        store.close()


def test_vendored_chart_library_is_served_when_present_and_optional(tmp_path, monkeypatch) -> None:
    """The uPlot files make setup vendors are served with their types; a server without them
    404s those two and still serves the page (which then says why it has no graphs)."""
    from forge.api import ui

    store = open_store(f"sqlite:///{tmp_path / 'forge.db'}")
    try:
        have = falcon.testing.TestClient(create_app(Config(data_dir=tmp_path, admin_token="t"), store))
        if (ui.resources.files("forge") / "ui" / "vendor" / "uPlot.iife.min.js").is_file():
            r = have.simulate_get("/ui/uPlot.iife.min.js")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript") and "uPlot" in r.text
            assert have.simulate_get("/ui/uPlot.min.css").headers["content-type"].startswith("text/css")
        monkeypatch.setattr(ui, "VENDOR", {"absent.js": "text/javascript"})
        bare = falcon.testing.TestClient(create_app(Config(data_dir=tmp_path, admin_token="t"), store))
        assert bare.simulate_get("/ui/uPlot.iife.min.js").status_code == 404
        assert bare.simulate_get("/ui/absent.js").status_code == 404
        assert bare.simulate_get("/ui").status_code == 200
    finally:
        store.close()
