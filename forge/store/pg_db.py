"""One PostgreSQL database shared by threads and processes: pool, retries, wake-ups.

- A psycopg 3 connection pool (autocommit connections; a write opens its own transaction).
- **Connection loss and restarts** are survived with bounded retries (tenacity, exponential
  back-off up to ``retry_seconds``); when the database stays down the caller gets
  ``Unavailable`` naming the store by its redacted URL — never its password.
- **No duplicated or lost write on a lost commit.** A write that fails before ``COMMIT`` was
  sent is rolled back by the server and simply retried. When the connection dies during
  ``COMMIT`` the outcome is unknown, so each write transaction notes its transaction id first
  and, on a fresh connection, asks ``pg_xact_status``: committed → the write's result is
  returned; aborted → the write is retried; still in progress → asked again.
- **Wake-ups** come from ``LISTEN``: one listener thread per store (its own connection, not
  the pool's) turns notifications into condition-variable broadcasts per channel. Waiters
  always re-read the database after a wake-up (the catch-up read), so a notification is only
  a hint: the listener wakes everybody after every (re)connect — notifications sent while it
  was away are lost — and waiters re-read every ``resync_seconds`` anyway as the safety net
  against a listener that died silently. Nobody polls in between.
- Fork-safe (gunicorn preload, tests): a child builds its own pool and listener and never
  touches — not even closes — the parent's connections.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import tenacity
from psycopg_pool import ConnectionPool

from forge.clock import SystemClock
from forge.errors import Unavailable
from forge.store.base import redact_url

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_SECONDS = 15.0  # how long a call keeps retrying a lost database before Unavailable
RESYNC_SECONDS = 5.0  # waiters re-read at least this often even without a notification
CONNECT_TIMEOUT = 5  # seconds, per connection attempt


class _AmbiguousCommit(Exception):
    """The connection died during COMMIT: the write may or may not have happened."""

    def __init__(self, xid: str, result: Any, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.xid, self.result, self.cause = xid, result, cause


class _RetryWrite(Exception):
    """A write whose transaction is known to have aborted: run it again."""


def describe(exc: BaseException, secret: str | None = None) -> str:
    """One line for an error message: the first line of the driver's text, password scrubbed."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if secret:
        text = text.replace(secret, "***")
    return text


class PgDb:
    def __init__(
        self,
        url: str,
        *,
        channels: tuple[str, ...] = (),
        min_size: int = 1,
        max_size: int = 10,
        retry_seconds: float = RETRY_SECONDS,
        resync_seconds: float = RESYNC_SECONDS,
    ) -> None:
        self.url = url
        self.name = redact_url(url)
        self._secret = _password(url)
        self.channels = channels
        self.min_size, self.max_size = min_size, max_size
        self.retry_seconds = retry_seconds
        self.resync_seconds = resync_seconds
        self._wall = SystemClock()  # blocking needs real time even under a FakeClock
        self._closed = False
        self._orphans: list[Any] = []
        self._reset()

    def _reset(self) -> None:
        # In a forked child the parent's pool is kept, unused and unclosed: closing a
        # connection sends Terminate on a socket the parent still uses.
        if hasattr(self, "_pool"):
            self._orphans.append(self._pool)
        self._pid = os.getpid()
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.url,
            min_size=self.min_size,
            max_size=self.max_size,
            open=False,
            # One wait for a connection never outlasts the caller's whole patience: a refused or
            # silent server must end in Unavailable after ``retry_seconds``, not after the pool's.
            timeout=min(CONNECT_TIMEOUT * 2, max(1.0, self.retry_seconds)),
            kwargs={
                "autocommit": True,
                "application_name": "forge",
                "connect_timeout": max(1, min(CONNECT_TIMEOUT, int(self.retry_seconds))),
            },
            name="forge-store",
        )
        self._pool.open(wait=False)
        self._cond = threading.Condition()
        self._seq = dict.fromkeys(self.channels, 0)
        self._waiters = 0
        self._listener: threading.Thread | None = None
        self._listen_conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()

    def _check_pid(self) -> None:
        if self._closed:
            raise Unavailable(f"store {self.name} is closed")
        if self._pid != os.getpid():
            self._reset()

    # ------------------------------------------------------------------ operations

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A connection of its own (migrations, the listener), outside the pool."""
        return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, **kwargs)

    def read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` on a pooled autocommit connection (one statement = one snapshot)."""

        def once() -> T:
            with self._pool.connection() as conn:
                return fn(conn)

        return self.retrying(once)

    def write(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` in one transaction, committed on return, retried on connection loss
        without ever applying it twice (see the module docstring)."""

        def once() -> T:
            with self._pool.connection() as conn:
                # One round trip (simple query protocol): open the transaction, note its id.
                cur = conn.execute("BEGIN; SELECT pg_current_xact_id()::text")
                try:
                    cur.nextset()
                    row = cur.fetchone()
                    assert row is not None  # the SELECT returns one row
                    xid = row[0]
                    result = fn(conn)
                except BaseException:
                    # Roll back here, quietly: Conflict and AlreadyExists are routine, and the
                    # pool would log a warning for every transaction handed back open.
                    if not conn.broken:
                        conn.execute("ROLLBACK")
                    raise
                try:
                    conn.execute("COMMIT")
                except psycopg.OperationalError as exc:
                    raise _AmbiguousCommit(xid, result, exc) from exc
                return result

        def attempt() -> T:
            try:
                return once()
            except _AmbiguousCommit as amb:
                log.warning(
                    "store %s: connection lost during COMMIT (%s); checking whether it committed",
                    self.name,
                    describe(amb.cause, self._secret),
                )
                xid = amb.xid
                if self.retrying(lambda: self._xact_committed(xid)):
                    return amb.result
                raise _RetryWrite() from amb

        return self.retrying(attempt)

    def _xact_committed(self, xid: str) -> bool:
        for _ in range(100):
            with self._pool.connection() as conn:
                row = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
            status = row[0] if row else None
            if status == "committed":
                return True
            if status != "in progress":  # aborted, or lost with a crash before it was logged
                return False
            self._stop.wait(0.05)  # the old backend is still finishing its commit
        raise psycopg.OperationalError(f"transaction {xid} still in progress")

    def retrying(self, fn: Callable[[], T]) -> T:
        """Call ``fn``, retrying connection-level failures for up to ``retry_seconds``."""
        self._check_pid()
        try:  # the common case, without the retry machinery's cost (~60 µs a call)
            return fn()
        except (psycopg.OperationalError, _RetryWrite) as exc:
            if self._closed:
                raise Unavailable(f"store {self.name} is closed") from None
            if isinstance(exc, psycopg.OperationalError):
                log.warning("store %s: %s; retrying", self.name, describe(exc, self._secret))
                self._pool.check()
        except psycopg.Error as exc:
            raise Unavailable(f"store {self.name}: {describe(exc, self._secret)}") from None
        attempts = [1]

        def before_sleep(state: tenacity.RetryCallState) -> None:
            attempts[0] = state.attempt_number + 1
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, psycopg.OperationalError):
                log.warning("store %s: %s; retrying", self.name, describe(exc, self._secret))
                self._pool.check()  # drop the pool's other dead connections at once

        retryer = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.retry_seconds),
            wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
            retry=tenacity.retry_if_exception_type((psycopg.OperationalError, _RetryWrite)),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retryer(fn)
        except psycopg.OperationalError as exc:
            if self._closed:
                raise Unavailable(f"store {self.name} is closed") from None
            raise Unavailable(
                f"store {self.name} is unreachable (gave up after {attempts[0] + 1} attempts in "
                f"{self.retry_seconds:g} s): {describe(exc, self._secret)}"
            ) from None
        except _RetryWrite:
            raise Unavailable(
                f"store {self.name}: a write kept failing at commit; it did not happen"
            ) from None
        except psycopg.Error as exc:
            raise Unavailable(f"store {self.name}: {describe(exc, self._secret)}") from None

    # ------------------------------------------------------------------ waiting

    def wait_for(self, channel: str, check: Callable[[], T], timeout: float) -> T:
        """Call ``check`` until it returns something truthy or ``timeout`` passes; it runs
        again after every notification on ``channel`` and at least every ``resync_seconds``."""
        deadline = self._wall.monotonic() + max(0.0, timeout)
        while True:
            with self._cond:
                seq = self._seq[channel]
            result = check()
            if result or self._wall.monotonic() >= deadline:
                return result
            with self._cond:
                self._waiters += 1
                try:
                    self._ensure_listener()
                    while self._seq[channel] == seq and not self._closed:
                        remaining = deadline - self._wall.monotonic()
                        if remaining <= 0:
                            return result
                        if not self._cond.wait(min(remaining, self.resync_seconds)):
                            break  # the safety net: re-read even without a notification
                finally:
                    self._waiters -= 1
                if self._closed:
                    return result

    def waiting(self) -> int:
        with self._cond:
            return self._waiters

    def wake(self, channels: tuple[str, ...] | None = None) -> None:
        with self._cond:
            for ch in channels or self.channels:
                self._seq[ch] += 1
            self._cond.notify_all()

    def listener_pid(self) -> int | None:
        """The backend pid of the LISTEN connection (tests terminate it)."""
        conn = self._listen_conn
        return conn.info.backend_pid if conn is not None and not conn.closed else None

    def _ensure_listener(self) -> None:
        # Called with self._cond held. The listener runs until close (a store that was
        # watched once is watched again: the API's and controllers' loops come straight back).
        if self._listener is None and not self._closed:
            self._listener = threading.Thread(target=self._listen, name=f"pg-listen:{self.name}", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with self.connect(application_name="forge-listen") as conn:
                    self._listen_conn = conn
                    for ch in self.channels:
                        conn.execute(f"LISTEN {ch}")
                    failures = 0
                    # Whatever was notified while nobody listened is lost: everybody re-reads.
                    self.wake()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.25):  # bounds how long close() waits
                            if note.channel in self._seq:
                                self.wake((note.channel,))
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                failures += 1
                log.warning(
                    "store %s: listener connection lost (%s); reconnecting",
                    self.name,
                    describe(exc, self._secret),
                )
                self.wake()
                self._stop.wait(min(2.0, 0.05 * 2 ** min(failures, 6)))
            finally:
                self._listen_conn = None

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        if self._pid == os.getpid():
            if self._listener is not None:
                self._listener.join(5)
            self._pool.close(timeout=5)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, for bulk work (migrate-store) that handles its own errors."""
        self._check_pid()
        with self._pool.connection() as conn:
            yield conn


def _password(url: str) -> str | None:
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
        return str(password) if password else None
    except psycopg.ProgrammingError:
        return None
