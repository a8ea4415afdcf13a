"""Who Forge is to GitHub: a token (``FORGE_GITHUB_TOKEN``) or a GitHub App.

A GitHub App authenticates as itself with a JWT signed RS256 by its private key (``iss`` = the
App's id, at most 10 minutes long; ``iat`` is back-dated a minute for clock drift, as GitHub
recommends), and acts on a repository with an installation access token: ``POST
/app/installations/{id}/access_tokens`` answers one valid for an hour. Tokens are cached per
installation until ``REFRESH_BEFORE`` seconds before they expire. The installation of a
repository comes from a webhook's ``installation.id`` when one was seen
(``remember_installation``) or is looked up once (``GET /repos/{owner}/{repo}/installation``).

Private keys and tokens never reach logs, errors or reprs.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Final

import jwt

from forge.clock import Clock, parse_iso
from forge.config import Config
from forge.errors import Invalid, NotFound
from forge.github.client import GithubClient, GithubError, StaticToken, TokenSource
from forge.models import GithubApp
from forge.store.base import Store

JWT_LIFETIME: Final[float] = 540.0  # GitHub allows 10 minutes; keep a margin
JWT_BACKDATE: Final[float] = 60.0
REFRESH_BEFORE: Final[float] = 300.0  # renew an installation token 5 minutes before it expires


class AppTokens:
    """Installation tokens of one GitHub App, minted on demand and cached until near expiry."""

    def __init__(
        self,
        app_id: str,
        private_key: bytes,
        api_url: str,
        clock: Clock,
        client: GithubClient | None = None,
    ) -> None:
        if not app_id.strip().isdigit():
            raise Invalid("FORGE_GITHUB_APP_ID must be the App's numeric id")
        self.app_id, self.clock = app_id.strip(), clock
        self._key = private_key
        self.api = client or GithubClient(api_url, _AppJwt(self), clock)
        self._installations: dict[str, int] = {}  # owner/repo (lowercase) → installation id
        self._tokens: dict[int, tuple[str, float]] = {}  # installation → (token, expires at)
        self._jwt: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AppTokens(app_id={self.app_id})"

    def close(self) -> None:
        self.api.close()

    @classmethod
    def from_file(cls, app_id: str, key_path: str, api_url: str, clock: Clock) -> AppTokens:
        try:
            key = Path(key_path).read_bytes()
        except OSError as exc:
            raise Invalid(f"FORGE_GITHUB_APP_PRIVATE_KEY: cannot read {key_path}: {exc.strerror}") from None
        return cls(app_id, key, api_url, clock)

    def app_jwt(self) -> str:
        """The App's own JWT (cached while more than a minute of it is left)."""
        now = self.clock.now()
        with self._lock:
            if self._jwt is not None and self._jwt[1] - now > 60:
                return self._jwt[0]
        claims = {"iat": int(now - JWT_BACKDATE), "exp": int(now + JWT_LIFETIME), "iss": self.app_id}
        try:
            token = jwt.encode(claims, self._key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise Invalid(
                f"FORGE_GITHUB_APP_PRIVATE_KEY is not a usable RSA private key ({type(exc).__name__})"
            ) from None
        with self._lock:
            self._jwt = (token, now + JWT_LIFETIME)
        return token

    def remember_installation(self, repo: str, installation_id: int) -> None:
        with self._lock:
            self._installations[repo.lower()] = int(installation_id)

    def installation_for(self, repo: str) -> int:
        with self._lock:
            known = self._installations.get(repo.lower())
        if known is not None:
            return known
        owner, _, name = repo.partition("/")
        found = self.api.request("GET", f"/repos/{owner}/{name}/installation", None)
        if not isinstance(found, dict) or not isinstance(found.get("id"), int):
            raise GithubError(f"GitHub named no installation of the App for {repo}", transient=False)
        self.remember_installation(repo, found["id"])
        return int(found["id"])

    def installation_token(self, installation: int) -> str:
        now = self.clock.now()
        with self._lock:
            cached = self._tokens.get(installation)
        if cached is not None and cached[1] - now > REFRESH_BEFORE:
            return cached[0]
        made = self.api.request("POST", f"/app/installations/{installation}/access_tokens", None)
        if not isinstance(made, dict) or not isinstance(made.get("token"), str):
            raise GithubError(f"installation {installation}: GitHub answered no token", transient=True)
        expires = made.get("expires_at")
        until = parse_iso(expires) if isinstance(expires, str) else now + 3600.0
        with self._lock:
            self._tokens[installation] = (made["token"], until)
        return str(made["token"])

    def token_for(self, repo: str | None) -> tuple[str, str]:
        if repo is None:
            return "app", self.app_jwt()
        installation = self.installation_for(repo)
        return f"installation:{installation}", self.installation_token(installation)

    def forget(self, installation: int) -> None:
        """Drop a token GitHub refused (revoked, or the installation was suspended)."""
        with self._lock:
            self._tokens.pop(installation, None)


class _AppJwt:
    """The TokenSource of the App's own calls (installation look-ups and token minting)."""

    def __init__(self, app: AppTokens) -> None:
        self.app = app

    def token_for(self, repo: str | None) -> tuple[str, str]:
        return "app", self.app.app_jwt()

    def close(self) -> None:
        pass


STORED_APP: Final[str] = "github"  # the GithubApp record ``forge github connect`` writes


def key_aad(name: str) -> str:
    return f"GithubApp/{name}/privateKey"


def secret_aad(name: str) -> str:
    return f"GithubApp/{name}/webhookSecret"


def stored_app(store: Store) -> GithubApp | None:
    try:
        return store.get(GithubApp, STORED_APP)
    except NotFound:
        return None


def app_tokens(config: Config, clock: Clock, store: Store | None = None) -> AppTokens | None:
    """The GitHub App Forge acts as: the environment's (``FORGE_GITHUB_APP_ID`` + key path) or
    the one ``forge github connect`` stored; None when there is none."""
    if config.github_app_id and config.github_app_private_key:
        return AppTokens.from_file(
            config.github_app_id, config.github_app_private_key, config.github_api_url, clock
        )
    record = stored_app(store) if store is not None else None
    if record is None or not record.spec.private_key:
        return None
    from forge.secrets import Keyring  # only when a stored App needs it

    pem = Keyring.load(config).decrypt(record.spec.private_key, key_aad(record.metadata.name))
    return AppTokens(str(record.spec.app_id), pem.encode(), config.github_api_url, clock)


def tokens_from_config(config: Config, clock: Clock, store: Store | None = None) -> TokenSource | None:
    """Who Forge is to GitHub: a GitHub App (configured or stored), else the token, else None."""
    app = app_tokens(config, clock, store)
    if app is not None:
        return app
    if config.github_token:
        return StaticToken(config.github_token)
    return None
