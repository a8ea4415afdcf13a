"""``forge github connect``: create Forge's GitHub App through GitHub's manifest flow.

1. The CLI serves, on loopback, a page whose form posts the App's manifest to GitHub
   (``https://github.com/settings/apps/new``, or the organization's) with a random ``state``.
2. One click on GitHub creates the App and sends the browser back to the CLI's ``/callback``
   with a one-hour ``code`` (and the ``state``, which must match).
3. The CLI hands the code to Forge's API (``POST /api/v1/github/connect``); the server
   exchanges it (``POST /app-manifests/{code}/conversions``) for the App's id, private key and
   webhook secret, and stores them as the ``GithubApp`` record ``github``, key and secret sealed
   like Secret values. Nothing secret travels back to the CLI or into a log.

``--code`` skips 1–2 for a code obtained elsewhere (a headless server).
"""

from __future__ import annotations

import html
import json
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

from forge.clock import Clock
from forge.errors import AlreadyExists, Invalid, NotFound
from forge.github.auth import STORED_APP, key_aad, secret_aad
from forge.github.client import GithubClient, GithubError, StaticToken
from forge.models import GithubApp, GithubAppSpec, ObjectMeta
from forge.store.base import Store

DEFAULT_GITHUB_URL: Final[str] = "https://github.com"
PERMISSIONS: Final[dict[str, str]] = {
    "contents": "read",  # fetch private repositories
    "metadata": "read",
    "deployments": "write",  # report releases
    "statuses": "write",  # forge/APP commit statuses
    "pull_requests": "read",  # previews
    "issues": "read",  # /forge approve comments
}
EVENTS: Final[list[str]] = ["push", "pull_request", "issue_comment"]


def build_manifest(name: str, public_url: str, redirect_url: str) -> dict[str, Any]:
    """The App manifest GitHub's ``settings/apps/new`` takes (docs: "Registering a GitHub App
    from a manifest")."""
    base = public_url.rstrip("/")
    return {
        "name": name,
        "url": base,
        "hook_attributes": {"url": f"{base}/api/v1/webhook/github", "active": True},
        "redirect_url": redirect_url,
        "public": False,
        "default_permissions": dict(PERMISSIONS),
        "default_events": list(EVENTS),
    }


def new_app_url(github_url: str, org: str | None, state: str) -> str:
    where = f"organizations/{org}/settings/apps/new" if org else "settings/apps/new"
    return f"{github_url.rstrip('/')}/{where}?{urlencode({'state': state})}"


def form_page(action: str, manifest: dict[str, Any]) -> bytes:
    """A page that posts the manifest to GitHub as soon as it loads (one click if scripts are off)."""
    value = html.escape(json.dumps(manifest), quote=True)
    return (
        "<!doctype html><meta charset=utf-8><title>Connect Forge to GitHub</title>"
        f'<form id=f method=post action="{html.escape(action, quote=True)}">'
        f'<input type=hidden name=manifest value="{value}">'
        "<button type=submit>Create the Forge GitHub App</button></form>"
        "<script>document.getElementById('f').submit()</script>"
    ).encode()


class CallbackServer:
    """The CLI's loopback page and ``/callback``: yields the code once GitHub sends it back."""

    def __init__(
        self, listen: str, manifest_for: Callable[[str], dict[str, Any]], action_for: Callable[[str], str]
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.state = secrets.token_urlsafe(24)
        self.code: str | None = None
        self.error: str | None = None
        self._done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer._get(self)

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port or 0)), Handler)
        bound_host, bound_port = str(self.server.server_address[0]), int(self.server.server_address[1])
        self.url = f"http://{bound_host}:{bound_port}"
        self.manifest = manifest_for(f"{self.url}/callback")
        self.action = action_for(self.state)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="forge-connect")
        self._thread.start()

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        if parts.path == "/":
            return self._send(h, 200, form_page(self.action, self.manifest), "text/html; charset=utf-8")
        if parts.path != "/callback":
            return self._send(h, 404, b"not found\n", "text/plain")
        q = parse_qs(parts.query)
        code, state = (q.get("code") or [""])[0], (q.get("state") or [""])[0]
        if not secrets.compare_digest(state, self.state) or not code:
            self.error = "GitHub's callback carried no code or a state this command did not send"
            return self._send(h, 400, (self.error + "\n").encode(), "text/plain")
        self.code = code
        self._done.set()
        return self._send(h, 200, b"Forge is connecting the App; you can close this tab.\n", "text/plain")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def wait(self, timeout: float) -> str | None:
        self._done.wait(timeout)
        return self.code

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exchange_code(api_url: str, code: str, clock: Clock) -> dict[str, Any]:
    """``POST /app-manifests/{code}/conversions`` (unauthenticated: the code is the credential)."""
    if not code or not all(c.isalnum() or c in "-_" for c in code) or len(code) > 200:
        raise Invalid(
            "the manifest code is not a GitHub code", [{"path": "code", "message": "letters and digits"}]
        )
    client = GithubClient(api_url, StaticToken(""), clock)
    try:
        made = client.request("POST", f"/app-manifests/{code}/conversions", None)
    except GithubError as exc:
        if exc.code == 404:
            raise NotFound(
                "GitHub does not know this code (it is used once and expires after an hour)"
            ) from None
        raise
    finally:
        client.close()
    if not isinstance(made, dict) or not isinstance(made.get("id"), int) or not made.get("pem"):
        raise GithubError("GitHub's conversion answer carries no App id or key", transient=False)
    return made


def store_app(store: Store, seal: Callable[[str, str], str], made: dict[str, Any]) -> GithubApp:
    """The ``GithubApp`` record ``github`` from a conversion answer, key and secret sealed."""
    owner_field = made.get("owner")
    owner: dict[str, Any] = owner_field if isinstance(owner_field, dict) else {}
    spec = GithubAppSpec(
        app_id=int(made["id"]),
        slug=str(made.get("slug") or ""),
        html_url=str(made.get("html_url") or ""),
        owner=str(owner.get("login") or ""),
        private_key=seal(str(made["pem"]), key_aad(STORED_APP)),
        webhook_secret=seal(str(made.get("webhook_secret") or ""), secret_aad(STORED_APP)),
    )
    record = GithubApp(metadata=ObjectMeta(name=STORED_APP), spec=spec)
    try:
        return store.create(record)
    except AlreadyExists:
        pass
    current = store.get(GithubApp, STORED_APP)
    current.spec = spec
    return store.update(current)


def public_view(app: GithubApp) -> dict[str, Any]:
    """What may be shown of the stored App: never its key or webhook secret."""
    return {
        "appId": app.spec.app_id,
        "slug": app.spec.slug,
        "htmlUrl": app.spec.html_url,
        "owner": app.spec.owner,
    }
