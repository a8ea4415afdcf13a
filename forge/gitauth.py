"""Credentials for git over HTTPS, shared by the source controller and the node agent's builder.

- ``select_credential(creds, repo)``: the RepoCredential that applies to ``owner/repo`` — a
  record scoped to ``owner/repo`` wins over one scoped to ``owner`` (GitHub names compare
  case-insensitively).
- ``open_token(keyring, cred)``: its token, decrypted (associated data
  ``RepoCredential/NAME/token``).
- ``git_auth(token)``: a context giving the ``-c`` options and environment a ``git fetch``
  needs. The token travels only in the environment (``FORGE_GIT_TOKEN``) of the git process:
  git asks ``GIT_ASKPASS``, a script in a fresh 0700 temporary directory that prints that
  variable, so the token is never in a process argument, a URL or a file. Inherited credential
  helpers are switched off (``-c credential.helper=``); without a token no askpass runs and
  ``GIT_TERMINAL_PROMPT=0`` makes git fail instead of prompting.
- ``scrub(text, token)``: everything git prints passes through this before it becomes part of a
  log line, a build log or an error message.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import quote

USERNAME: Final[str] = "x-access-token"
TOKEN_ENV: Final[str] = "FORGE_GIT_TOKEN"
_ASKPASS: Final[str] = f"""#!/bin/sh
case "$1" in
  Username*|username*) echo {USERNAME} ;;
  *) printf '%s\\n' "${TOKEN_ENV}" ;;
esac
"""
# Variables that would let an inherited setting answer git's prompts instead of ours.
_DROP: Final[tuple[str, ...]] = ("GIT_ASKPASS", "SSH_ASKPASS", TOKEN_ENV)


class _Credential(Protocol):
    """What ``select_credential`` reads of a RepoCredential (the model, without importing it)."""

    @property
    def spec(self) -> Any: ...

    @property
    def metadata(self) -> Any: ...


class _Decrypter(Protocol):
    def decrypt(self, token: str, aad: str) -> str: ...


def select_credential(creds: Sequence[_Credential], repo: str) -> Any:
    """The credential for ``owner/repo``: an ``owner/repo`` scope beats an ``owner`` scope; None
    when no scope matches. Ties (two records of one scope) go to the first by name."""
    repo_l, owner_l = repo.lower(), repo.partition("/")[0].lower()
    ordered = sorted(creds, key=lambda c: c.metadata.name)
    for want in (repo_l, owner_l):
        for cred in ordered:
            if cred.spec.scope.lower() == want:
                return cred
    return None


def token_aad(name: str) -> str:
    return f"RepoCredential/{name}/token"


def open_token(keyring: _Decrypter, cred: _Credential | None) -> str | None:
    """The plaintext token of ``cred``; None for no credential or an empty token."""
    if cred is None or not cred.spec.token:
        return None
    return keyring.decrypt(cred.spec.token, token_aad(cred.metadata.name))


def scrub(text: str, token: str | None) -> str:
    """``text`` with the token (plain or percent-encoded, as git may print it in a URL) masked."""
    if token:
        for form in {token, quote(token, safe="")}:
            text = text.replace(form, "***")
    return text


@dataclass(frozen=True)
class GitAuth:
    """The options and environment of one authenticated git invocation."""

    args: list[str]  # ``-c`` options to put right after ``git``; they never hold the token
    env: dict[str, str] = field(repr=False)  # holds the token; never log it
    token: str | None = field(default=None, repr=False)

    def apply(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` without inherited askpass/token variables, plus this invocation's."""
        env = {k: v for k, v in base.items() if k not in _DROP}
        env.update(self.env)
        return env

    def scrub(self, text: str) -> str:
        return scrub(text, self.token)


@contextmanager
def git_auth(token: str | None, tmp_parent: Path | None = None) -> Iterator[GitAuth]:
    """Set up GIT_ASKPASS for ``token`` in a private temporary directory (under ``tmp_parent``,
    default the system's), removed on exit. With no token git gets no askpass at all."""
    if not token:
        yield GitAuth(
            args=["-c", "credential.helper=", "-c", "core.askPass="], env={"GIT_TERMINAL_PROMPT": "0"}
        )
        return
    if tmp_parent is not None:
        Path(tmp_parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".askpass-", dir=tmp_parent))  # mkdtemp makes it 0700
    try:
        os.chmod(tmp, 0o700)
        script = tmp / "askpass.sh"
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "w") as f:
            f.write(_ASKPASS)
        yield GitAuth(
            args=["-c", "credential.helper=", "-c", f"core.askPass={script}"],
            env={"GIT_ASKPASS": str(script), "GIT_TERMINAL_PROMPT": "0", TOKEN_ENV: token},
            token=token,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
