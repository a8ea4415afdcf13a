"""Delivery to one drain: syslog over TCP or TLS (RFC 6587 / RFC 5425), or HTTPS batches.

``send(frames)`` returns only once the receiver has the frames, else raises ``DeliveryError``:
over syslog that is when the receiver's TCP stack acknowledged every byte (the socket's send
queue is empty, ``SIOCOUTQ``) and the connection is still up — syslog has no application-level
acknowledgement, so this is the strongest promise plain syslog allows; over HTTPS it is a 2xx
answer. Errors never carry the URL's credentials (they only ever name host and port).

TLS verifies the receiver's certificate and host name against the system's trust store and,
when the operator names one (``FORGE_DRAIN_CA_FILE``, PEM), their own CA as well.
"""

from __future__ import annotations

import base64
import fcntl
import http.client
import select
import socket
import ssl
import struct
import termios
import threading
import uuid
from typing import Final, Protocol

from forge.clock import Clock
from forge.drains import DrainUrl

SIOCOUTQ: Final[int] = getattr(termios, "TIOCOUTQ", 0x5411)
CONNECT_TIMEOUT: Final[float] = 5.0
ACK_TIMEOUT: Final[float] = 10.0
ACK_STEP: Final[float] = 0.002
HTTP_BATCH: Final[int] = 500  # frames per POST
CONTENT_TYPE: Final[str] = "application/logplex-1"


class DeliveryError(Exception):
    """The frames may not have arrived: send them again after a back-off."""


class Sender(Protocol):
    def send(self, frames: list[bytes]) -> None: ...

    def close(self) -> None: ...


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc.__class__.__name__}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__


class SyslogSender:
    """One long-lived connection, reopened after any failure."""

    def __init__(
        self,
        url: DrainUrl,
        clock: Clock,
        stop: threading.Event,
        ca_file: str | None = None,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self.url, self.clock, self.stop, self.ack_timeout = url, clock, stop, ack_timeout
        self.ctx = tls_context(ca_file) if url.tls else None
        self.sock: socket.socket | None = None

    @property
    def where(self) -> str:
        return f"{self.url.host}:{self.url.port}"

    def _connect(self) -> socket.socket:
        try:
            raw = socket.create_connection((self.url.host, self.url.port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise DeliveryError(f"cannot connect to {self.where}: {_describe(exc)}") from None
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ctx is None:
            return raw
        try:
            return self.ctx.wrap_socket(raw, server_hostname=self.url.host)
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            raise DeliveryError(f"TLS with {self.where} failed: {_describe(exc)}") from None

    def _alive(self, sock: socket.socket) -> bool:
        """False once the receiver closed or reset the connection. A syslog receiver sends no
        data; what is readable is its close, or (TLS 1.3) a session ticket, read and dropped."""
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return True
        sock.setblocking(False)
        try:
            if isinstance(sock, ssl.SSLSocket):
                return bool(sock.recv(4096))
            return bool(sock.recv(1, socket.MSG_PEEK))
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return True
        except OSError:  # ssl.SSLError is one
            return False
        finally:
            sock.settimeout(self.ack_timeout)

    def send(self, frames: list[bytes]) -> None:
        if self.sock is not None and not self._alive(self.sock):
            self.close()
        if self.sock is None:
            self.sock = self._connect()
        sock = self.sock
        try:
            sock.settimeout(self.ack_timeout)
            sock.sendall(b"".join(frames))
            self._acked(sock)
        except (OSError, DeliveryError) as exc:
            self.close()
            if isinstance(exc, DeliveryError):
                raise
            raise DeliveryError(f"sending to {self.where} failed: {_describe(exc)}") from None

    def _acked(self, sock: socket.socket) -> None:
        """Wait (bounded) until the receiver's TCP acknowledged every byte we wrote."""
        deadline = self.clock.monotonic() + self.ack_timeout
        buf = bytearray(4)
        while True:
            fcntl.ioctl(sock.fileno(), SIOCOUTQ, buf)
            if struct.unpack("i", buf)[0] == 0:
                break
            if self.clock.monotonic() >= deadline or self.stop.is_set():
                raise DeliveryError(f"{self.where} did not acknowledge within {self.ack_timeout:g}s")
            self.stop.wait(ACK_STEP)
        # A reset purges the send queue too: an empty queue is an acknowledgement only while the
        # connection is still up.
        if not self._alive(sock):
            raise DeliveryError(f"{self.where} closed the connection")

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class HttpsSender:
    """POSTs of up to ``HTTP_BATCH`` octet-counted frames, like Heroku's HTTPS drains."""

    def __init__(
        self, url: DrainUrl, drain: str, clock: Clock, ca_file: str | None = None, timeout: float = 10.0
    ) -> None:
        self.url, self.drain, self.clock, self.timeout = url, drain, clock, timeout
        self.ctx = tls_context(ca_file)
        self.conn: http.client.HTTPSConnection | None = None
        self.auth = ""
        if url.username or url.password:
            token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
            self.auth = f"Basic {token}"

    @property
    def where(self) -> str:
        return f"{self.url.host}:{self.url.port}"

    def send(self, frames: list[bytes]) -> None:
        for i in range(0, len(frames), HTTP_BATCH):
            self._post(frames[i : i + HTTP_BATCH])

    def _post(self, frames: list[bytes]) -> None:
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Logplex-Msg-Count": str(len(frames)),
            "Logplex-Frame-Id": uuid.uuid4().hex,
            "Logplex-Drain-Token": self.drain,
            "User-Agent": "forge-log-drain/1",
        }
        if self.auth:
            headers["Authorization"] = self.auth
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(
                self.url.host, self.url.port, timeout=self.timeout, context=self.ctx
            )
        try:
            self.conn.request("POST", self.url.path, body=b"".join(frames), headers=headers)
            resp = self.conn.getresponse()
            resp.read(64 * 1024)
            status = resp.status
            if resp.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise DeliveryError(f"POST to {self.where} failed: {_describe(exc)}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"{self.where} answered HTTP {status}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def make_sender(
    url: DrainUrl, drain: str, clock: Clock, stop: threading.Event, ca_file: str | None = None
) -> Sender:
    if url.is_syslog:
        return SyslogSender(url, clock, stop, ca_file)
    return HttpsSender(url, drain, clock, ca_file)
