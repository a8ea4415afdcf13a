"""forge.gitauth: which RepoCredential applies, opening its token, and the askpass setup."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from forge.gitauth import TOKEN_ENV, USERNAME, git_auth, open_token, scrub, select_credential, token_aad
from forge.models import ObjectMeta, RepoCredential, RepoCredentialSpec
from forge.secrets import DecryptionFailed, Keyring

TOKEN = "ghp_unitTOKEN/with+odd=chars"


def creds(*scopes: str) -> list[RepoCredential]:
    return [RepoCredential(metadata=ObjectMeta(name=f"c{i}"), spec=RepoCredentialSpec(scope=s))
            for i, s in enumerate(scopes)]


@pytest.mark.parametrize(
    ("scopes", "repo", "want"),
    [
        (["acme", "acme/hello"], "acme/hello", "c1"),
        (["acme/hello", "acme"], "acme/hello", "c0"),
        (["acme/hello", "acme"], "acme/other", "c1"),
        (["acme/other"], "acme/hello", None),
        (["other", "other/hello"], "acme/hello", None),
        (["ACME/Hello"], "acme/hello", "c0"),
        (["Acme"], "acme/hello", "c0"),
        ([], "acme/hello", None),
    ],
    ids=["repo-beats-owner", "repo-beats-owner-any-order", "owner-fallback", "other-repo-ignored",
         "other-owner-ignored", "repo-case-insensitive", "owner-case-insensitive", "none"],
)
def test_select_credential(scopes: list[str], repo: str, want: str | None) -> None:
    """The owner/repo scope beats the owner scope; nothing else ever applies."""
    got = select_credential(creds(*scopes), repo)
    assert (got.metadata.name if got else None) == want


def test_select_credential_tie_is_stable() -> None:
    """Two credentials of one scope: the first by name wins, whatever the list order."""
    a, b = creds("acme", "acme")
    assert select_credential([b, a], "acme/x") is a and select_credential([a, b], "acme/x") is a


def test_open_token_uses_the_record_name_as_associated_data() -> None:
    """A token opens under its own record's name and not under another's; no token → None."""
    ring = Keyring({"k1": os.urandom(32)}, "k1")
    cred = RepoCredential(metadata=ObjectMeta(name="acme"),
                          spec=RepoCredentialSpec(scope="acme", token=ring.encrypt(TOKEN, token_aad("acme"))))
    assert open_token(ring, cred) == TOKEN
    moved = cred.model_copy(update={"metadata": ObjectMeta(name="evil")})
    with pytest.raises(DecryptionFailed):
        open_token(ring, moved)
    assert open_token(ring, None) is None
    assert open_token(ring, creds("acme")[0]) is None


def test_git_auth_with_token(tmp_path: Path) -> None:
    """The token is only in the environment; the askpass script lives in a 0700 dir removed after use."""
    with git_auth(TOKEN, tmp_path) as auth:
        assert not any(TOKEN in a for a in auth.args)
        assert "-c" in auth.args and "credential.helper=" in auth.args
        script = Path(auth.env["GIT_ASKPASS"])
        assert script.parent.parent == tmp_path
        assert stat.S_IMODE(script.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(script.stat().st_mode) == 0o700
        assert TOKEN not in script.read_text()
        assert f"core.askPass={script}" in auth.args
        env = auth.apply({"PATH": "/usr/bin:/bin", "GIT_ASKPASS": "/evil", "SSH_ASKPASS": "/evil", TOKEN_ENV: "old"})
        assert env[TOKEN_ENV] == TOKEN and env["GIT_ASKPASS"] == str(script) and "SSH_ASKPASS" not in env
        assert env["GIT_TERMINAL_PROMPT"] == "0"
        assert TOKEN not in repr(auth)
        def ask(prompt: str) -> str:
            return subprocess.run([str(script), prompt], env=env, capture_output=True, text=True,
                                  check=True).stdout.strip()

        assert ask("Username for 'https://github.com': ") == USERNAME
        assert ask("Password for 'https://x-access-token@github.com': ") == TOKEN
    assert not script.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_git_auth_without_token(tmp_path: Path) -> None:
    """No token: no askpass at all, inherited ones dropped, git may not prompt."""
    with git_auth(None, tmp_path) as auth:
        env = auth.apply({"GIT_ASKPASS": "/evil", TOKEN_ENV: "stale"})
        assert env == {"GIT_TERMINAL_PROMPT": "0"}
        assert auth.args == ["-c", "credential.helper=", "-c", "core.askPass="]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "token", "want"),
    [
        (f"fatal: bad {TOKEN} here", TOKEN, "fatal: bad *** here"),
        ("url http://x-access-token:ghp_unitTOKEN%2Fwith%2Bodd%3Dchars@h/", TOKEN, "url http://x-access-token:***@h/"),
        ("nothing secret", None, "nothing secret"),
    ],
    ids=["plain", "percent-encoded", "no-token"],
)
def test_scrub(text: str, token: str | None, want: str) -> None:
    """The token is masked in git output, also as it would appear inside a URL."""
    assert scrub(text, token) == want
