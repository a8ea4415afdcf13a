"""Secrets at rest: AES-256-GCM tokens, key file, associated data and key rotation."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from forge.config import Config
from forge.errors import Conflict
from forge.models import ObjectMeta, RepoCredential, RepoCredentialSpec, Resource, Secret, SecretSpec
from forge.secrets import (
    KEY_FILE,
    DecryptionFailed,
    Keyring,
    KeyringError,
    is_ciphertext,
    key_id,
    open_secret_data,
    rotate_all,
    seal_secret_data,
)
from forge.store.sqlite import SqliteStore

PLAINTEXT = "postgres://app:hunter2-very-secret@db/app"
AAD = "Secret/hello/DATABASE_URL"


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.load(Config(data_dir=tmp_path))


@pytest.mark.parametrize("plain", ["", "x", PLAINTEXT, "ünïcødé ✓ 鍵", "a" * 100_000, "line\nbreak\x00nul"],
                         ids=["empty", "one-char", "url", "unicode", "large", "control-chars"])
def test_round_trip(keyring: Keyring, plain: str) -> None:
    """A sealed value opens to the same text with the same associated data."""
    token = keyring.encrypt(plain, AAD)
    assert is_ciphertext(token) and token.startswith(f"fsec1:{keyring.primary}:")
    assert len(plain) < 4 or plain not in token
    assert keyring.decrypt(token, AAD) == plain


def test_fresh_nonce_per_value(keyring: Keyring) -> None:
    """Sealing the same value repeatedly never reuses a nonce or repeats a ciphertext."""
    tokens = [keyring.encrypt(PLAINTEXT, AAD) for _ in range(500)]
    nonces = {t.split(":")[2] for t in tokens}
    assert len(set(tokens)) == 500 and len(nonces) == 500
    assert all(len(base64.urlsafe_b64decode(n + "==")) == 12 for n in nonces)


@pytest.mark.parametrize("other_aad", [
    "Secret/other/DATABASE_URL", "Secret/hello/API_KEY", "RepoCredential/hello/token", "", AAD + " "],
    ids=["other-record", "other-field", "other-kind", "no-aad", "near-miss"])
def test_swapped_ciphertext_fails(keyring: Keyring, other_aad: str) -> None:
    """A ciphertext moved to another record, field or kind does not decrypt."""
    token = keyring.encrypt(PLAINTEXT, AAD)
    with pytest.raises(DecryptionFailed) as exc:
        keyring.decrypt(token, other_aad)
    assert PLAINTEXT not in exc.value.message and "hunter2" not in str(exc.value.to_dict())


def _flip(text: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("tamper", [
    lambda p: [p[0], p[1], p[2], _flip(p[3], 0)],
    lambda p: [p[0], p[1], p[2], _flip(p[3], -1)],
    lambda p: [p[0], p[1], _flip(p[2], 5), p[3]],
    lambda p: [p[0], "kdeadbeef0000", p[2], p[3]],
    lambda p: [p[0], p[1], p[2], p[3][:10]],
    lambda p: ["fsec0", p[1], p[2], p[3]],
    lambda p: [p[0], p[1], p[2]],
    lambda p: [PLAINTEXT],
], ids=["ciphertext-bit", "tag-bit", "nonce-bit", "unknown-kid", "truncated", "wrong-prefix",
        "missing-part", "plaintext"])
def test_tampered_token_fails(keyring: Keyring, tamper: object) -> None:
    """Any change to a token makes decryption fail with a message free of the value."""
    parts = keyring.encrypt(PLAINTEXT, AAD).split(":")
    bad = ":".join(tamper(parts))  # type: ignore[operator]
    with pytest.raises(DecryptionFailed) as exc:
        keyring.decrypt(bad, AAD)
    assert "hunter2" not in exc.value.message and AAD in exc.value.message


def test_key_file_created_private_and_reused(tmp_path: Path) -> None:
    """First start writes a 0600 key file; later loads use the same key."""
    first = Keyring.load(Config(data_dir=tmp_path / "data"))
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["primary"] == first.primary and list(doc["keys"]) == [first.primary]
    assert len(base64.urlsafe_b64decode(doc["keys"][first.primary] + "=")) == 32
    second = Keyring.load(Config(data_dir=tmp_path / "data"))
    assert second.decrypt(first.encrypt(PLAINTEXT, AAD), AAD) == PLAINTEXT


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=["0644", "0640", "0604", "0660"])
def test_key_file_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    """A key file readable or writable by group or others is refused with a clear error."""
    Keyring.load(Config(data_dir=tmp_path))
    (tmp_path / KEY_FILE).chmod(mode)
    with pytest.raises(KeyringError, match=f"mode {mode:04o}.*chmod 600"):
        Keyring.load(Config(data_dir=tmp_path))


@pytest.mark.parametrize("content", ["not json", '{"primary": "k1"}', '{"primary": "k1", "keys": {"k1": "c2hvcnQ"}}',
                                     '{"primary": "nope", "keys": {}}'],
                         ids=["not-json", "no-keys", "short-key", "no-primary-key"])
def test_malformed_key_file_refused(tmp_path: Path, content: str) -> None:
    """A broken key file is a KeyringError, never a silent new key."""
    fd = os.open(tmp_path / KEY_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(KeyringError, match="key file"):
        Keyring.load(Config(data_dir=tmp_path))


def test_racing_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    """Several processes creating the key file at once all end up with the same key."""
    barrier, found, errors = threading.Barrier(8), [], []

    def start() -> None:
        barrier.wait()
        try:
            found.append(Keyring.load(Config(data_dir=tmp_path)).primary)
        except KeyringError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(found)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]


def test_env_key_is_primary_and_no_file_written(tmp_path: Path) -> None:
    """FORGE_SECRET_KEY alone needs no key file, and only that key opens its values."""
    key = os.urandom(32)
    cfg = Config.from_env(data_dir=tmp_path, env={"FORGE_SECRET_KEY": base64.b64encode(key).decode()})
    kr = Keyring.load(cfg)
    assert kr.primary == key_id(key) and not (tmp_path / KEY_FILE).exists()
    token = kr.encrypt(PLAINTEXT, AAD)
    other = Keyring.load(Config(data_dir=tmp_path / "elsewhere"))
    with pytest.raises(DecryptionFailed, match="does not hold"):
        other.decrypt(token, AAD)


def test_env_key_still_decrypts_after_rotation(tmp_path: Path) -> None:
    """After a rotation the file key is primary and FORGE_SECRET_KEY values still open."""
    key, data = os.urandom(32), tmp_path / "not-yet-created"
    kr = Keyring.load(Config(data_dir=data, secret_key=key))
    old = kr.encrypt(PLAINTEXT, AAD)
    new_kid = kr.rotate()
    again = Keyring.load(Config(data_dir=data, secret_key=key))
    assert again.primary == new_kid != key_id(key)
    assert again.decrypt(old, AAD) == PLAINTEXT
    assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600


def test_rotate_keeps_old_tokens_until_dropped(keyring: Keyring, tmp_path: Path) -> None:
    """rotate() makes a new primary; old tokens open until the old key is retired."""
    old_kid = keyring.primary
    old = keyring.encrypt(PLAINTEXT, AAD)
    new_kid = keyring.rotate()
    assert new_kid != old_kid and keyring.primary == new_kid
    assert keyring.encrypt("v", AAD).split(":")[1] == new_kid
    assert keyring.decrypt(old, AAD) == PLAINTEXT
    assert keyring.retire(new_kid) == [old_kid]
    assert keyring.key_ids == [new_kid]
    with pytest.raises(DecryptionFailed):
        keyring.decrypt(old, AAD)


def test_other_process_follows_rotation(tmp_path: Path) -> None:
    """A keyring loaded before a rotation elsewhere decrypts and encrypts with the new key."""
    worker_a = Keyring.load(Config(data_dir=tmp_path))
    worker_b = Keyring.load(Config(data_dir=tmp_path))
    new_kid = worker_a.rotate()
    token = worker_a.encrypt(PLAINTEXT, AAD)
    assert worker_b.decrypt(token, AAD) == PLAINTEXT  # reloads once on the unknown kid
    worker_c = Keyring.load(Config(data_dir=tmp_path))
    worker_a.rotate()
    assert worker_c.encrypt("x", AAD).split(":")[1] == worker_a.primary != new_kid


def _secret(name: str, data: dict[str, str]) -> Secret:
    return Secret(metadata=ObjectMeta(name=name), spec=SecretSpec(app=name, data=data))


def _cred(name: str, token: str) -> RepoCredential:
    return RepoCredential(metadata=ObjectMeta(name=name), spec=RepoCredentialSpec(scope="acme", token=token))


def test_seal_and_open_helpers(keyring: Keyring) -> None:
    """seal_secret_data binds each value to kind/name/key; open_secret_data reverses it."""
    sealed = seal_secret_data(keyring, "Secret", "hello", {"A": "1", "B": PLAINTEXT})
    assert all(is_ciphertext(v) for v in sealed.values())
    assert open_secret_data(keyring, "Secret", "hello", sealed) == {"A": "1", "B": PLAINTEXT}
    swapped = {"A": sealed["B"], "B": sealed["A"]}
    with pytest.raises(DecryptionFailed, match="Secret/hello/A"):
        open_secret_data(keyring, "Secret", "hello", swapped)
    with pytest.raises(DecryptionFailed):
        open_secret_data(keyring, "Secret", "other", sealed)


def test_raw_sqlite_file_holds_no_plaintext(keyring: Keyring, tmp_path: Path) -> None:
    """After writing a sealed Secret and token through the store, the DB files hold no plaintext."""
    store = SqliteStore(str(tmp_path / "forge.db"))
    sealed = seal_secret_data(keyring, "Secret", "hello", {"DATABASE_URL": PLAINTEXT})
    store.create(_secret("hello", sealed))
    store.create(_cred("acme", keyring.encrypt("ghp_TOPSECRETTOKEN123", "RepoCredential/acme/token")))
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("forge.db"))
    store.close()
    assert sealed["DATABASE_URL"].encode() in raw  # the scan does see what was written
    for needle in (b"hunter2", PLAINTEXT.encode(), b"TOPSECRET"):
        assert needle not in raw


class _InterferingStore(SqliteStore):
    """A real SQLite store whose first update loses a race to another writer."""

    interfered = False

    def update(self, obj: Resource, force: bool = False) -> Resource:
        if not self.interfered and obj.kind == "Secret":
            self.interfered = True
            other = self.get(obj.kind, obj.metadata.name)
            other.metadata.labels["touched"] = "yes"
            super().update(other)
        return super().update(obj, force)


def test_rotate_all_reencrypts_everything(keyring: Keyring, tmp_path: Path) -> None:
    """rotate_all re-encrypts every value under the new key (retrying on Conflict) and drops old keys."""
    store = _InterferingStore(str(tmp_path / "forge.db"))
    old_kid = keyring.primary
    for name, data in (("hello", {"A": "alpha", "B": "beta"}), ("web", {"C": "gamma"}), ("empty", {})):
        store.create(_secret(name, seal_secret_data(keyring, "Secret", name, data)))
    store.create(_cred("acme", keyring.encrypt("tok-1", "RepoCredential/acme/token")))
    store.create(_cred("public", ""))
    old_token = store.get("Secret", "hello").spec.data["A"]

    assert rotate_all(store, keyring) == 4
    new_kid = keyring.primary
    assert new_kid != old_kid and store.interfered
    hello = store.get("Secret", "hello")
    assert hello.metadata.labels == {"touched": "yes"}  # the concurrent write survived
    assert open_secret_data(keyring, "Secret", "hello", hello.spec.data) == {"A": "alpha", "B": "beta"}
    assert keyring.decrypt(store.get("RepoCredential", "acme").spec.token, "RepoCredential/acme/token") == "tok-1"
    assert store.get("RepoCredential", "public").spec.token == ""
    for kind in ("Secret", "RepoCredential"):
        for obj in store.list(kind)[0]:
            values = obj.spec.data.values() if kind == "Secret" else [obj.spec.token] if obj.spec.token else []
            assert all(v.split(":")[1] == new_kid for v in values)
    assert json.loads((tmp_path / KEY_FILE).read_text())["keys"].keys() == {new_kid}
    with pytest.raises(DecryptionFailed):
        keyring.decrypt(old_token, "Secret/hello/A")
    assert rotate_all(store, keyring) == 4  # a second rotation moves everything again
    store.close()


def test_rotate_all_gives_up_on_endless_conflicts(keyring: Keyring, tmp_path: Path) -> None:
    """A record rewritten on every attempt makes rotation fail loudly and keeps the old keys."""

    class Busy(SqliteStore):
        def update(self, obj: Resource, force: bool = False) -> Resource:
            other = self.get(obj.kind, obj.metadata.name)
            super().update(other)
            return super().update(obj, force)

    store = Busy(str(tmp_path / "forge.db"))
    store.create(_secret("hello", seal_secret_data(keyring, "Secret", "hello", {"A": "alpha"})))
    old_kid = keyring.primary
    with pytest.raises(Conflict, match="rotation again"):
        rotate_all(store, keyring)
    assert old_kid in keyring.key_ids
    hello = store.get("Secret", "hello")
    assert open_secret_data(keyring, "Secret", "hello", hello.spec.data) == {"A": "alpha"}
    store.close()
