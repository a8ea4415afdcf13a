"""A throwaway rsyslogd (Debian's ``rsyslog`` + ``rsyslog-gnutls``) for the log-drain tests.

Each ``Rsyslog`` runs ``rsyslogd -n`` in the foreground with a config, pid file, work dir and
output file of its own under the test's directory, listening on one loopback port (plain TCP,
or TLS with a server certificate from ``make_ca``) and writing every message it receives as
``APP-NAME PROCID MSGID MSG`` lines. The system's rsyslog (and /etc/rsyslog.conf) is never
read, started or touched. ``stop()`` kills only the process it started.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.harness import free_port

SETUP_HINT = "run `make setup` (as root it installs Debian's rsyslog and rsyslog-gnutls)"


def available() -> str | None:
    """None when rsyslogd with its TLS driver is here, else why not."""
    if shutil.which("rsyslogd") is None:
        return f"rsyslogd is not installed: {SETUP_HINT}"
    if not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
        return f"rsyslog's TLS driver (rsyslog-gnutls) is not installed: {SETUP_HINT}"
    return None


def make_ca(directory: Path, host: str = "localhost") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``host`` (and 127.0.0.1): (ca.pem, cert.pem, key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forge drain test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(paths[2], 0o600)
    return paths


class Rsyslog:
    def __init__(self, root: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.root, self.tls = Path(root), tls
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "work").mkdir(exist_ok=True)
        self.port = free_port()
        self.out = self.root / "received.log"
        self.conf = self.root / "rsyslog.conf"
        self.pidfile = self.root / "rsyslogd.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_conf()

    def _write_conf(self) -> None:
        lines = [f'global(workDirectory="{self.root / "work"}" maxMessageSize="64k"']
        if self.tls:
            ca, cert, key = self.tls
            lines[0] += (
                f' defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{cert}"'
                f' defaultNetstreamDriverKeyFile="{key}"'
            )
        lines[0] += ")"
        if self.tls:
            lines.append(
                'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" '
                'streamDriver.authMode="anon" maxSessions="50")'
            )
        else:
            lines.append('module(load="imtcp" maxSessions="50")')
        lines += [
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}")',
            'template(name="drainline" type="string" string="%app-name% %procid% %msgid% %msg%\\n")',
            f'action(type="omfile" file="{self.out}" template="drainline" flushOnTXEnd="on" asyncWriting="off")',
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'syslog+tls' if self.tls else 'syslog+tcp'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        with open(self.root / "rsyslogd.stderr", "ab") as log:
            self.proc = subprocess.Popen(
                ["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {(self.root / 'rsyslogd.stderr').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"rsyslogd did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def received(self) -> list[tuple[str, str, str, str]]:
        """(app, procid, msgid, msg) of every message written so far."""
        try:
            text = self.out.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split(" ", 3)
            if len(parts) == 4:
                out.append((parts[0], parts[1], parts[2], parts[3].lstrip("\ufeff")))
        return out
