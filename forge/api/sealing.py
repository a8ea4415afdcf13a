"""Write-only values: Secret ``spec.data`` and RepoCredential ``spec.token``.

Plaintext arrives in a request, is sealed with the Keyring (AES-256-GCM, associated data
``KIND/NAME/FIELD`` so a ciphertext copied onto another record fails to open) before it
reaches the store, and never leaves again: every response, list and watch event goes
through ``redact``. Responses omit ``spec.data`` / ``spec.token`` entirely; a Secret's key
names are in ``status.keys``. Because responses omit them, a PUT without ``spec.data`` (or
with an empty ``spec.token``) keeps the stored values — a GET→edit→PUT round trip never wipes
a secret. The only routes that return plaintext are ``GET /api/v1/instances/NAME/secrets`` and
``GET /api/v1/instances/NAME/gitcredential`` (to that Instance's node).
"""

from __future__ import annotations

import threading
from typing import Any

from forge.config import Config
from forge.secrets import Keyring

SEALED_KINDS = frozenset({"Secret", "RepoCredential"})


def aad(kind: str, name: str, field: str) -> str:
    return f"{kind}/{name}/{field}"


class Sealer:
    """Loads the Keyring on first use, so an API that never touches secrets needs no key."""

    def __init__(self, config: Config, keyring: Any = None) -> None:
        self._config = config
        self._keyring = keyring
        self._lock = threading.Lock()

    @property
    def keyring(self) -> Any:
        with self._lock:
            if self._keyring is None:
                self._keyring = Keyring.load(self._config)
            return self._keyring

    def seal_values(self, kind: str, name: str, data: dict[str, str]) -> dict[str, str]:
        kr = self.keyring
        return {k: kr.encrypt(v, aad(kind, name, k)) for k, v in data.items()}

    def seal_token(self, name: str, token: str) -> str:
        return self.keyring.encrypt(token, aad("RepoCredential", name, "token")) if token else ""

    def open_values(self, kind: str, name: str, data: dict[str, str]) -> dict[str, str]:
        kr = self.keyring
        return {k: kr.decrypt(v, aad(kind, name, k)) for k, v in data.items()}

    def digest(self, data: dict[str, str]) -> str:
        """Keyed digest of a Secret's plaintext values (``status.dataDigest``)."""
        from forge.secrets import data_digest

        return data_digest(self.keyring, data)

    def open_digest(self, name: str, sealed: dict[str, str], plain: dict[str, str]) -> str | None:
        """Digest of stored values ``sealed`` overlaid with ``plain``; None when a stored one will not open."""
        from forge.secrets import DecryptionFailed

        try:
            values = self.open_values("Secret", name, sealed)
        except DecryptionFailed:
            return None
        return self.digest({**values, **plain})

    def rotate_all(self, store: Any) -> Any:
        from forge.secrets import rotate_all

        return rotate_all(store, self.keyring)


def redact(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """Drop write-only values from a dumped record (returns a shallow-copied dict)."""
    if kind not in SEALED_KINDS:
        return data
    spec = dict(data.get("spec") or {})
    spec.pop("data" if kind == "Secret" else "token", None)
    return {**data, "spec": spec}
