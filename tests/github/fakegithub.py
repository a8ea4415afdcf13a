"""A fake GitHub REST API on loopback that judges every request by GitHub's own description.

Each request is checked against ``@octokit/openapi`` (``tests/github/openapi.py``): an operation
GitHub does not have, a parameter or body it would refuse, a property it does not know, a
missing ``X-GitHub-Api-Version`` or ``User-Agent``, or credentials it would not accept end in
``violations`` (and a 4xx answer, as GitHub would give). Tests assert ``violations == []``.

It keeps what Forge created (Deployments, their statuses, commit statuses), mints installation
tokens for a GitHub App whose public key it holds (verifying the App's RS256 JWT as GitHub
does), converts manifest codes, and plays faults: ``down`` (503s), ``stop()`` / ``start()``
(connection refused on the same port) and rate limits (``limit(...)``: a primary limit with
``X-RateLimit-Reset`` or a secondary one with ``Retry-After``), timed by the test's clock.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt

from forge.clock import iso
from tests.github.openapi import check_request, example_response

API_VERSION = "2022-11-28"


@dataclass
class Seen:
    method: str
    path: str
    template: str | None
    query: dict[str, str]
    body: Any
    status: int = 0
    auth: str = ""  # which credential: "token", "app", "installation:N", "" (none)


@dataclass
class Installation:
    id: int
    repos: list[str]  # owner/name, lowercase


@dataclass
class FakeGithub:
    clock: Any  # forge.clock.Clock: times of rate-limit resets and token expiry
    tokens: set[str] = field(default_factory=set)
    app_id: str | None = None
    app_public_key: bytes | None = None
    installations: list[Installation] = field(default_factory=list)
    mint: Callable[[], str] | None = None  # the next installation token's text (a git remote's)

    def __post_init__(self) -> None:
        self.requests: list[Seen] = []
        self.violations: list[str] = []
        self.deployments: dict[int, dict[str, Any]] = {}
        self.statuses: dict[int, list[dict[str, Any]]] = {}
        self.commit_statuses: dict[str, list[dict[str, Any]]] = {}
        self.installation_tokens: dict[str, tuple[int, float]] = {}
        self.manifest_codes: dict[str, dict[str, Any]] = {}
        self.down = False
        self._limit: tuple[str, float] | None = None  # (kind, until)
        self._ids = itertools.count(1000)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.on_request: Callable[[Seen], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeGithub:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                fake._handle(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-github").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------------ faults

    def limit(self, seconds: float, kind: str = "primary") -> None:
        """Answer every call rate-limited for ``seconds`` of the test's clock."""
        self._limit = (kind, self.clock.now() + seconds)

    # ------------------------------------------------------------------ views for tests

    def states_of(self, release: str) -> list[str]:
        """The deployment statuses GitHub received for a Forge release (the newest GitHub
        Deployment of that name: names come back when an App is created again), in order."""
        for dep_id, dep in sorted(self.deployments.items(), reverse=True):
            if dep["payload"].get("forge", {}).get("release") == release:
                return [s["state"] for s in self.statuses.get(dep_id, [])]
        return []

    def deployment_of(self, release: str) -> dict[str, Any] | None:
        found = [
            d for d in self.deployments.values() if d["payload"].get("forge", {}).get("release") == release
        ]
        assert len(found) <= 1, f"{len(found)} GitHub Deployments for {release}"
        return found[0] if found else None

    def commit_states(self, sha: str, context: str) -> list[str]:
        return [s["state"] for s in self.commit_statuses.get(sha, []) if s["context"] == context]

    # ------------------------------------------------------------------ the server

    def _reply(
        self, h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        raw = b"" if body is None else json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(raw)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        template, problems = check_request(h.command, parts.path, query, raw, h.headers.get("Content-Type"))
        body = json.loads(raw) if raw and not any("not JSON" in p for p in problems) else None
        seen = Seen(h.command, parts.path, template, query, body)
        with self._lock:
            self.requests.append(seen)
            if self.on_request is not None:
                self.on_request(seen)
            if h.headers.get("X-GitHub-Api-Version") != API_VERSION:
                problems.append(f"X-GitHub-Api-Version is {h.headers.get('X-GitHub-Api-Version')!r}")
            if not h.headers.get("User-Agent"):
                problems.append("no User-Agent (GitHub refuses such requests)")
            if "application/vnd.github+json" not in (h.headers.get("Accept") or ""):
                problems.append(f"Accept is {h.headers.get('Accept')!r}")
            if problems:
                self.violations += [f"{h.command} {parts.path}: {p}" for p in problems]
                seen.status = 422
                return self._reply(h, 422, {"message": "Validation Failed", "errors": problems})
            if self.down:
                seen.status = 503
                return self._reply(h, 503, {"message": "Service Unavailable"})
            if self._limit is not None:
                kind, until = self._limit
                now = self.clock.now()
                if now < until:
                    seen.status = 403 if kind == "primary" else 429
                    headers = (
                        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(until))}
                        if kind == "primary"
                        else {"Retry-After": str(int(until - now + 0.999))}
                    )
                    return self._reply(h, seen.status, {"message": "API rate limit exceeded"}, headers)
                self._limit = None
            status, answer = self._route(h, seen, template or "")
            seen.status = status
            return self._reply(h, status, answer, {"X-RateLimit-Remaining": "4999"})

    # ------------------------------------------------------------------ credentials

    def _credential(self, h: BaseHTTPRequestHandler, repo: str | None, app_only: bool) -> str | None:
        auth = h.headers.get("Authorization") or ""
        scheme, _, cred = auth.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not cred:
            return None
        if app_only:
            if self.app_public_key is None:
                return None
            try:
                claims = jwt.decode(
                    cred,
                    self.app_public_key,
                    algorithms=["RS256"],
                    options={"require": ["iat", "exp", "iss"], "verify_exp": False, "verify_iat": False},
                )
            except jwt.PyJWTError as exc:
                self.violations.append(f"app JWT refused: {exc}")
                return None
            now = self.clock.now()
            if str(claims["iss"]) != str(self.app_id) or claims["exp"] - claims["iat"] > 600:
                self.violations.append(f"app JWT claims refused: {claims}")
                return None
            if not claims["iat"] <= now + 60 or claims["exp"] < now:
                self.violations.append(f"app JWT not valid now: {claims} at {now}")
                return None
            return "app"
        if cred in self.tokens:
            return "token"
        inst = self.installation_tokens.get(cred)
        if inst is not None and inst[1] > self.clock.now():
            allowed = next(i for i in self.installations if i.id == inst[0]).repos
            if repo is None or repo.lower() in allowed:
                return f"installation:{inst[0]}"
        return None

    # ------------------------------------------------------------------ operations

    def _route(self, h: BaseHTTPRequestHandler, seen: Seen, template: str) -> tuple[int, Any]:
        segs = seen.path.strip("/").split("/")
        repo = f"{segs[1]}/{segs[2]}" if segs[0] == "repos" and len(segs) > 2 else None
        if template == "/app-manifests/{code}/conversions":
            conv = self.manifest_codes.pop(segs[1], None)
            return (201, conv) if conv else (404, {"message": "Not Found"})
        app_only = template.startswith("/app/") or template == "/repos/{owner}/{repo}/installation"
        who = self._credential(h, repo, app_only)
        if who is None:
            return 401, {"message": "Bad credentials"}
        seen.auth = who
        key = (seen.method, template)
        if key == ("GET", "/repos/{owner}/{repo}/installation"):
            inst = next((i for i in self.installations if repo and repo.lower() in i.repos), None)
            if inst is None:
                return 404, {"message": "Not Found"}
            out = example_response(template, "get", "200")
            out["id"] = inst.id
            return 200, out
        if key == ("POST", "/app/installations/{installation_id}/access_tokens"):
            inst_id = int(segs[2])
            if not any(i.id == inst_id for i in self.installations):
                return 404, {"message": "Not Found"}
            token = self.mint() if self.mint is not None else "ghs_" + secrets.token_hex(18)
            expires = self.clock.now() + 3600
            self.installation_tokens[token] = (inst_id, expires)
            out = example_response(template, "post", "201")
            out.update(token=token, expires_at=iso(expires).replace(".000Z", "Z"))
            return 201, out
        if key == ("GET", "/repos/{owner}/{repo}/deployments"):
            found = [
                d
                for d in sorted(self.deployments.values(), key=lambda d: -d["id"])
                if d["repo"] == repo.lower()  # type: ignore[union-attr]
                and seen.query.get("sha", d["sha"]) == d["sha"]
                and seen.query.get("environment", d["environment"]) == d["environment"]
            ]
            return 200, [self._public(d) for d in found]
        if key == ("POST", "/repos/{owner}/{repo}/deployments"):
            body = seen.body
            dep_id = next(self._ids)
            dep = example_response(template, "post", "201")
            dep.update(
                id=dep_id,
                sha=body["ref"],
                ref=body["ref"],
                environment=body.get("environment", "production"),
                payload=body.get("payload", {}),
                transient_environment=body.get("transient_environment", False),
                production_environment=body.get("production_environment", True),
                description=body.get("description", ""),
                repo=repo.lower(),  # type: ignore[union-attr]
            )
            self.deployments[dep_id] = dep
            self.statuses[dep_id] = []
            return 201, self._public(dep)
        if key == ("POST", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"):
            dep_id = int(segs[4])
            if dep_id not in self.deployments or self.deployments[dep_id]["repo"] != repo.lower():  # type: ignore[union-attr]
                return 404, {"message": "Not Found"}
            status = example_response(template, "post", "201")
            status.update(id=next(self._ids), **seen.body)
            self.statuses[dep_id].append(status)
            return 201, status
        if key == ("POST", "/repos/{owner}/{repo}/statuses/{sha}"):
            status = example_response(template, "post", "201")
            status.update(id=next(self._ids), **seen.body)
            self.commit_statuses.setdefault(segs[4], []).append(status)
            return 201, status
        self.violations.append(f"{seen.method} {template}: valid for GitHub, but the fake does not serve it")
        return 404, {"message": "Not Found"}

    @staticmethod
    def _public(dep: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in dep.items() if k != "repo"}
