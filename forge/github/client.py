"""A small client for GitHub's REST API: the calls Forge makes, rate limits honoured.

GitHub answers a rate-limited call with 429, or with 403 and either ``Retry-After`` (the
secondary limits) or ``X-RateLimit-Remaining: 0`` plus ``X-RateLimit-Reset`` (epoch seconds).
Either way the client raises ``RateLimited(until)`` and, until then, refuses to send anything
more under the same credential (it raises again at once, without a request), so a burst of
reports waiting for the reset does not spend the next window's first calls on 403s.

Every call is one HTTP request, never retried here: the caller is a reconcile, and the work
queue's back-off (or ``requeue_after``) is the one retry mechanism. The token travels only in
the ``Authorization`` header; no error, log line or message carries it.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Final, Protocol

import httpx

from forge.clock import Clock
from forge.errors import ForgeError

API_VERSION: Final[str] = "2022-11-28"
USER_AGENT: Final[str] = "forge-paas"
TIMEOUT: Final[float] = 10.0
DEFAULT_LIMIT_WAIT: Final[float] = 60.0  # a 403/429 that names no time: wait a minute
MAX_LIMIT_WAIT: Final[float] = 3600.0  # a reset further away than this is a clock skew


class GithubError(ForgeError):
    """A GitHub API call failed; ``transient`` says whether trying again may help."""

    reason: ClassVar[str] = "GithubError"

    def __init__(self, message: str, status: int = 0, transient: bool = True) -> None:
        super().__init__(message)
        self.code, self.transient = status, transient


class RateLimited(GithubError):
    """GitHub asked Forge to wait until ``until`` (epoch seconds) before calling again."""

    reason: ClassVar[str] = "GithubRateLimited"

    def __init__(self, message: str, until: float) -> None:
        super().__init__(message, 429, transient=True)
        self.until = until


class TokenSource(Protocol):
    """Who Forge is to GitHub for a repository: ``(scope, token)``. Calls under one scope share
    a rate limit (a personal token: one scope; a GitHub App: one per installation)."""

    def token_for(self, repo: str | None) -> tuple[str, str]: ...

    def close(self) -> None: ...


class StaticToken:
    """``FORGE_GITHUB_TOKEN``: one token for every repository."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(***)"

    def token_for(self, repo: str | None) -> tuple[str, str]:
        return "token", self._token

    def close(self) -> None:
        pass


def limit_until(resp: httpx.Response, now: float) -> float | None:
    """When a rate-limited answer says calls may resume (epoch seconds); None when ``resp`` is
    not a rate-limit answer. ``Retry-After`` wins over the reset time, as GitHub documents."""
    remaining = resp.headers.get("x-ratelimit-remaining")
    retry_after = resp.headers.get("retry-after")
    if resp.status_code not in (403, 429):
        return None
    if resp.status_code == 403 and retry_after is None and remaining != "0":
        return None  # a plain permission refusal
    if retry_after is not None:
        try:
            return now + min(MAX_LIMIT_WAIT, max(0.0, float(retry_after)))
        except ValueError:
            pass
    reset = resp.headers.get("x-ratelimit-reset")
    if remaining == "0" and reset is not None:
        try:
            return min(now + MAX_LIMIT_WAIT, max(now, float(reset)) + 1.0)
        except ValueError:
            pass
    return now + DEFAULT_LIMIT_WAIT


class GithubClient:
    """Calls to ``api_url`` (github.com's or a GitHub Enterprise Server's ``/api/v3``)."""

    def __init__(
        self,
        api_url: str,
        tokens: TokenSource,
        clock: Clock,
        http: httpx.Client | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.tokens, self.clock = tokens, clock
        self.http = http or httpx.Client(timeout=timeout, follow_redirects=False)
        self._blocked: dict[str, float] = {}  # scope → epoch seconds calls may resume
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()
        self.tokens.close()

    def blocked_until(self, repo: str | None) -> float | None:
        scope, _ = self.tokens.token_for(repo)
        with self._lock:
            until = self._blocked.get(scope)
        return until if until is not None and until > self.clock.now() else None

    def request(
        self,
        method: str,
        path: str,
        repo: str | None,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        token: tuple[str, str] | None = None,
    ) -> Any:
        """One call; the decoded JSON answer (None for 204). ``path`` starts with ``/``."""
        scope, secret = token or self.tokens.token_for(repo)
        now = self.clock.now()
        with self._lock:
            until = self._blocked.get(scope, 0.0)
        if until > now:
            raise RateLimited(f"GitHub rate limit: waiting {until - now:.0f}s before {method} {path}", until)
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
        }
        if secret:  # the manifest code exchange is the one call made without credentials
            headers["Authorization"] = f"Bearer {secret}"
        try:
            resp = self.http.request(method, self.api_url + path, headers=headers, json=json, params=params)
        except httpx.HTTPError as exc:
            raise GithubError(f"{method} {path}: GitHub unreachable: {type(exc).__name__}") from None
        return self._answer(method, path, scope, resp)

    def _answer(self, method: str, path: str, scope: str, resp: httpx.Response) -> Any:
        now = self.clock.now()
        until = limit_until(resp, now)
        if until is not None:
            with self._lock:
                self._blocked[scope] = max(self._blocked.get(scope, 0.0), until)
            raise RateLimited(
                f"{method} {path}: GitHub rate limit ({resp.status_code}); resuming in {until - now:.0f}s",
                until,
            )
        if resp.status_code >= 400:
            detail = _message_of(resp)
            transient = resp.status_code >= 500 or resp.status_code in (408, 409)
            raise GithubError(
                f"{method} {path}: GitHub answered {resp.status_code}: {detail}",
                resp.status_code,
                transient=transient,
            )
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise GithubError(f"{method} {path}: GitHub's answer is not JSON") from None


def _message_of(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.reason_phrase or "(no message)"
    msg = body.get("message") if isinstance(body, dict) else None
    return str(msg)[:200] if msg else resp.reason_phrase or "(no message)"
