"""Secrets at rest: AES-256-GCM with a key id beside each ciphertext (DESIGN §2, issue 5).

A sealed value is the text token ``fsec1:<kid>:<nonce>:<ciphertext>`` (URL-safe base64, no
padding): a fresh random 96-bit nonce per value, and associated data ``KIND/NAME/FIELD``
(``Secret/hello/DATABASE_URL``, ``RepoCredential/acme/token``) so a ciphertext copied onto
another record or field fails to open. Failures raise ``DecryptionFailed``, whose message
names the record and field, never the value.

Keys. ``FORGE_SECRET_KEY`` (32 bytes, base64) contributes a key; otherwise, on first start, a
key file ``DATA_DIR/secret-keys.json`` = ``{"primary": kid, "keys": {kid: base64}}`` is created
with mode 0600 (written to a temporary file and linked into place, so two processes racing
on first start agree on one key). A key file readable by group or others is refused. Key ids
are derived from the key bytes (a truncated SHA-256 under a fixed label), so every process
names the same key the same way.

Primary key. ``FORGE_SECRET_KEY`` is primary while the key file names no primary of its own;
the first ``rotate()`` writes a fresh key into the key file and makes it primary, and from
then on the environment key only decrypts older values. (An operator who wants no key
material on disk keeps the environment key and does not rotate.)

Rotation (``forge secrets rotate-key`` → ``rotate_all``): add a fresh primary key and persist
it, re-encrypt every Secret value and RepoCredential token still under another key (update
with the resourceVersion read, retried on Conflict), sweep a second time for values written
meanwhile by a process that had not yet seen the new key, then drop the old keys from the
file. Other processes pick the change up by themselves: encryption re-reads the key file when
it was replaced, decryption re-reads it once on an unknown key id.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from forge.config import Config
from forge.errors import Conflict, ForgeError, NotFound
from forge.store.base import Store

log = logging.getLogger(__name__)

PREFIX = "fsec1"
KEY_FILE = "secret-keys.json"
_KID_LABEL = b"forge-secret-key-id\x00"
_DIGEST_LABEL = b"forge-secret-data-digest\x00"


class DecryptionFailed(ForgeError):
    status: ClassVar[int] = 500
    reason: ClassVar[str] = "DecryptionFailed"


class KeyringError(ForgeError):
    """The key material is missing, malformed or not private enough."""

    status: ClassVar[int] = 500
    reason: ClassVar[str] = "KeyringError"


def key_id(key: bytes) -> str:
    return "k" + hashlib.sha256(_KID_LABEL + key).hexdigest()[:12]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_ciphertext(text: Any) -> bool:
    """True for a well-formed ``fsec1:kid:nonce:ct`` token (says nothing about which key)."""
    if not isinstance(text, str):
        return False
    parts = text.split(":")
    if len(parts) != 4 or parts[0] != PREFIX or not parts[1]:
        return False
    try:
        return len(_unb64(parts[2])) == 12 and len(_unb64(parts[3])) >= 16
    except (binascii.Error, ValueError):
        return False


class Keyring:
    """The AES-256-GCM keys of this control plane, one of them primary (used to encrypt)."""

    def __init__(
        self, keys: dict[str, bytes], primary: str, path: Path | None = None, env_key: bytes | None = None
    ) -> None:
        if primary not in keys:
            raise KeyringError(f"primary key {primary!r} is not in the keyring")
        self._keys, self._primary, self._path, self._env_key = dict(keys), primary, path, env_key
        self._lock = threading.Lock()
        self._mtime = self._file_mtime()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, config: Config) -> Keyring:
        """Keys from FORGE_SECRET_KEY and/or the key file (created 0600 when neither exists)."""
        path = Path(config.data_dir) / KEY_FILE
        env_key = config.secret_key
        if env_key is not None and len(env_key) != 32:
            raise KeyringError("FORGE_SECRET_KEY must decode to exactly 32 bytes")
        if env_key is None and not path.exists():
            _create_key_file(path)
        keys, primary = _merge(_read_key_file(path), env_key)
        return cls(keys, primary, path, env_key)

    @property
    def primary(self) -> str:
        return self._primary

    @property
    def key_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._keys)

    def _file_mtime(self) -> tuple[int, int, int] | None:
        """The key file's identity; a rotation replaces the file, so the inode changes."""
        try:
            st = os.stat(self._path) if self._path else None
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size) if st else None

    def reload(self) -> None:
        """Re-read the key file (another process may have rotated)."""
        if self._path is None:
            return
        mtime = self._file_mtime()
        keys, primary = _merge(_read_key_file(self._path), self._env_key)
        with self._lock:
            self._keys, self._primary, self._mtime = keys, primary, mtime

    # ------------------------------------------------------------------ sealing

    def encrypt(self, plaintext: str, aad: str) -> str:
        if self._path is not None and self._file_mtime() != self._mtime:
            self.reload()
        with self._lock:
            kid, key = self._primary, self._keys[self._primary]
        nonce = os.urandom(12)
        ct = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), aad.encode("utf-8"))
        return f"{PREFIX}:{kid}:{_b64(nonce)}:{_b64(ct)}"

    def decrypt(self, token: str, aad: str) -> str:
        if not is_ciphertext(token):
            raise DecryptionFailed(f"{aad}: the stored value is not a sealed secret")
        _, kid, nonce, ct = token.split(":")
        key = self._key(kid)
        if key is None:
            self.reload()
            key = self._key(kid)
        if key is None:
            raise DecryptionFailed(f"{aad}: sealed with key {kid}, which this keyring does not hold")
        try:
            return AESGCM(key).decrypt(_unb64(nonce), _unb64(ct), aad.encode("utf-8")).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise DecryptionFailed(
                f"{aad}: cannot decrypt (tampered, or copied from another record or field)"
            ) from None

    def derive(self, label: bytes) -> bytes:
        """A sub-key of the primary key for ``label`` (HMAC-SHA256); never the key itself."""
        if self._path is not None and self._file_mtime() != self._mtime:
            self.reload()
        with self._lock:
            key = self._keys[self._primary]
        return hmac.new(key, label, hashlib.sha256).digest()

    def _key(self, kid: str) -> bytes | None:
        with self._lock:
            return self._keys.get(kid)

    def token_kid(self, token: str) -> str | None:
        return token.split(":")[1] if is_ciphertext(token) else None

    # ------------------------------------------------------------------ rotation

    def rotate(self) -> str:
        """Add a fresh key to the key file, make it primary, persist; returns its id."""
        path = self._need_path()
        with _file_lock(path):
            doc = _read_key_file(path) if path.exists() else {"primary": None, "keys": {}}
            key = AESGCM.generate_key(bit_length=256)
            kid = key_id(key)
            doc["keys"][kid] = _b64(key)
            doc["primary"] = kid
            _write_key_file(path, doc)
        self.reload()
        log.info("secret key rotated: new primary key %s", kid)
        return kid

    def retire(self, keep: str) -> list[str]:
        """Drop every file key except ``keep`` (call only after re-encrypting); returns dropped ids."""
        path = self._need_path()
        with _file_lock(path):
            doc = _read_key_file(path)
            dropped = sorted(k for k in doc["keys"] if k != keep)
            doc["keys"] = {k: v for k, v in doc["keys"].items() if k == keep}
            doc["primary"] = keep if keep in doc["keys"] else doc["primary"]
            _write_key_file(path, doc)
        self.reload()
        return dropped

    def _need_path(self) -> Path:
        if self._path is None:
            raise KeyringError("this keyring has no key file to rotate")
        return self._path


# --------------------------------------------------------------------------- key file


def _merge(doc: dict[str, Any], env_key: bytes | None) -> tuple[dict[str, bytes], str]:
    keys = {kid: _unb64(v) for kid, v in doc["keys"].items()}
    primary = doc.get("primary")
    if env_key is not None:
        keys[key_id(env_key)] = env_key
        if not primary:
            primary = key_id(env_key)
    if not primary or primary not in keys:
        raise KeyringError("the secret key file names no usable primary key")
    return keys, primary


def _read_key_file(path: Path) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return {"primary": None, "keys": {}}
    except OSError as exc:
        raise KeyringError(f"cannot open secret key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise KeyringError(
                f"secret key file {path} has mode {mode:04o}: it must be readable by its owner only "
                f"(chmod 600 {path})"
            )
        raw = fh.read(1 << 20)
    try:
        doc = json.loads(raw)
        keys = doc["keys"]
        if not isinstance(keys, dict) or not all(
            isinstance(k, str) and len(_unb64(v)) == 32 for k, v in keys.items()
        ):
            raise ValueError("keys must map ids to 32-byte keys")
        return {"primary": doc.get("primary"), "keys": dict(keys)}
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise KeyringError(f"secret key file {path} is malformed") from None


def _write_key_file(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_key_file(path: Path) -> None:
    """First start: a fresh key, written aside then hard-linked into place (fails if present)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = AESGCM.generate_key(bit_length=256)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"primary": key_id(key), "keys": {key_id(key): _b64(key)}}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
            log.info("created secret key file %s", path)
        except FileExistsError:
            pass  # another process won the race; its key is the one
    finally:
        os.unlink(tmp)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- records


def aad_for(kind: str, name: str, field: str) -> str:
    return f"{kind}/{name}/{field}"


def seal_secret_data(keyring: Keyring, kind: str, name: str, data: dict[str, str]) -> dict[str, str]:
    """Plaintext values → tokens bound to ``kind/name/key``."""
    return {k: keyring.encrypt(v, aad_for(kind, name, k)) for k, v in data.items()}


def open_secret_data(keyring: Keyring, kind: str, name: str, data: dict[str, str]) -> dict[str, str]:
    """Tokens → plaintext; ``DecryptionFailed`` naming the field on any bad value."""
    return {k: keyring.decrypt(v, aad_for(kind, name, k)) for k, v in data.items()}


def data_digest(keyring: Keyring, data: dict[str, str]) -> str:
    """A keyed digest of plaintext ``data`` that says whether values changed and nothing else.

    HMAC-SHA256 under a key derived from the primary key (a digest made after a rotation
    differs even for equal values, which only costs a redeploy when values are written again)."""
    mac_key = keyring.derive(_DIGEST_LABEL)
    canonical = json.dumps(sorted(data.items()), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return "hs256:" + hmac.new(mac_key, canonical, hashlib.sha256).hexdigest()[:32]


def _reseal(keyring: Keyring, kind: str, name: str, field: str, value: str) -> str | None:
    """The value re-encrypted under the primary key, or None when it already is."""
    if kind == "RepoCredential" and not value:
        return None
    if keyring.token_kid(value) == keyring.primary:
        return None
    aad = aad_for(kind, name, field)
    plain = keyring.decrypt(value, aad) if is_ciphertext(value) else value
    return keyring.encrypt(plain, aad)


def _rotate_record(store: Store, keyring: Keyring, kind: str, name: str) -> int:
    for _ in range(20):
        try:
            obj = store.get(kind, name)
        except NotFound:
            return 0
        changed = 0
        if kind == "Secret":
            for k, v in obj.spec.data.items():
                new = _reseal(keyring, kind, name, k, v)
                if new is not None:
                    obj.spec.data[k], changed = new, changed + 1
        elif kind in ("LogDrain", "Notifier"):  # forge drains add / notify add: the URL's credentials
            new = _reseal(keyring, kind, name, "url", obj.spec.url)
            if new is not None:
                obj.spec.url, changed = new, 1
        elif kind == "GithubApp":  # forge github connect: the App's key and webhook secret
            for attr, field_name in (("private_key", "privateKey"), ("webhook_secret", "webhookSecret")):
                value = getattr(obj.spec, attr)
                new = _reseal(keyring, kind, name, field_name, value) if value else None
                if new is not None:
                    setattr(obj.spec, attr, new)
                    changed += 1
        else:
            new = _reseal(keyring, kind, name, "token", obj.spec.token)
            if new is not None:
                obj.spec.token, changed = new, 1
        if not changed:
            return 0
        try:
            store.update(obj)
            return changed
        except (Conflict, NotFound):
            continue  # someone wrote it meanwhile: re-read and re-check
    raise Conflict(f"{kind} {name!r} kept changing during key rotation; run the rotation again")


def rotate_all(store: Store, keyring: Keyring) -> int:
    """New primary key, every sealed value re-encrypted under it, old keys dropped; returns count."""
    new = keyring.rotate()
    total = 0
    for _sweep in range(2):
        for kind in ("Secret", "RepoCredential", "GithubApp", "Notifier", "LogDrain"):
            items, _ = store.list(kind)
            for obj in items:
                total += _rotate_record(store, keyring, kind, obj.metadata.name)
    dropped = keyring.retire(new)
    log.info("secret key rotation: %d values re-encrypted under %s, dropped keys %s", total, new, dropped)
    return total
