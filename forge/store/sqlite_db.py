"""One SQLite file shared by threads and processes: connections, transactions, wake-ups.

- A small pool hands each thread its own connection for the length of one operation
  (sqlite3 connections must not be used by two threads at once).
- Writers in this process queue on a lock before ``BEGIN IMMEDIATE``, so they never spin in
  SQLite's busy handler against each other; other processes are waited for through
  ``busy_timeout``. ``synchronous=FULL``: a commit that returned is on disk.
- Waiters (watch, log follow) block on a condition variable of their **topic** (a record
  kind; None: every change). A write wakes only the waiters of the topics it touched, so 200
  nodes renewing Leases do not wake the watchers of Instances. Writes in this process notify
  at once; writes from other processes are noticed by one tailer thread per store that checks
  ``PRAGMA data_version`` every ``poll_seconds`` while anybody waits (the way kine tails its
  log) and asks ``changed_topics`` which topics moved (None: wake everyone), so a hundred
  watchers cost one cheap query per tick, not a hundred.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TypeVar

from forge.clock import SystemClock
from forge.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

TAILER_LINGER = 1.0  # seconds the tailer keeps running after the last waiter left

Topics = Collection[str] | None  # what a write touched / a waiter waits for; None: everything


class SqliteDb:
    def __init__(
        self,
        path: str,
        busy_timeout: float = 10.0,
        poll_seconds: float = 0.01,
        changed_topics: Callable[[sqlite3.Connection], Topics] | None = None,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.poll_seconds = poll_seconds
        # The tailer's question after another connection committed: which topics moved?
        self.changed_topics = changed_topics
        self._reset()
        self._closed = False
        # Blocking needs real time even when the store's timestamps come from a FakeClock.
        self._wall = SystemClock()

    def _reset(self) -> None:
        """Fresh pool and locks; also run in a forked child (gunicorn preload), which must
        never use the parent's connections or locks another thread may have held."""
        # The parent's connections are kept, unused and unclosed: even closing one in the
        # child could checkpoint or unlock the parent's file state.
        self._orphans: list[sqlite3.Connection] = getattr(self, "_free", [])
        self._pid = os.getpid()
        self._free: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # topic None: woken by every change
        self._topic_conds: dict[str, threading.Condition] = {}
        self._seq = 0
        self._interrupts = 0
        self._topic_seq: dict[str | None, int] = {}
        self._waiters = 0
        self._tailer: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ connections

    def connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise Unavailable(f"store {self.path}: cannot open: {exc}") from exc
        return conn

    @contextmanager
    def conn(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise Unavailable("store is closed")
        if self._pid != os.getpid():
            self._reset()
        with self._pool_lock:
            conn = self._free.pop() if self._free else None
        if conn is None:
            conn = self.connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            with self._pool_lock:
                if self._closed:
                    conn.close()
                else:
                    self._free.append(conn)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one snapshot."""
        with self.conn() as conn:
            try:
                conn.execute("BEGIN")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise Unavailable(f"store read failed: {exc}") from exc

    @contextmanager
    def write(self, topics: set[str] | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed (durably) on exit and rolled back on any error.

        ``topics``: filled by the caller inside the transaction with what it touched; only
        those waiters are woken (None: every waiter)."""
        with self._write_lock, self.conn() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise Unavailable(f"store write failed: {exc}") from exc
        self.notify(topics)

    # ------------------------------------------------------------------ waiting

    def notify(self, topics: Topics = None) -> None:
        """Wake the waiters of ``topics`` (and those waiting for any change); None: everyone."""
        with self._lock:
            self._seq += 1
            self._cond.notify_all()
            if topics is None:
                for topic in list(self._topic_seq):
                    self._topic_seq[topic] = self._topic_seq[topic] + 1
                for cond in self._topic_conds.values():
                    cond.notify_all()
                return
            for topic in topics:
                self._topic_seq[topic] = self._topic_seq.get(topic, 0) + 1
                topic_cond = self._topic_conds.get(topic)
                if topic_cond is not None:
                    topic_cond.notify_all()

    def interrupt(self) -> None:
        """Every blocked ``wait_for`` returns now with its last result, as on a timeout."""
        with self._lock:
            self._interrupts += 1
        self.notify()

    def _mark(self, topic: str | None) -> int:
        # Called with self._lock held: the counter a waiter on ``topic`` compares against.
        return self._seq if topic is None else self._topic_seq.setdefault(topic, 0)

    def wait_for(self, check: Callable[[], T], timeout: float, topic: str | None = None) -> T:
        """Call ``check`` until it returns something truthy or ``timeout`` passes.

        ``check`` runs again after every change to ``topic`` (None: to the file) from any
        process; the last (falsy) result is returned on timeout.
        """
        deadline = self._wall.monotonic() + max(0.0, timeout)
        while True:
            with self._lock:
                seq, interrupts = self._mark(topic), self._interrupts
                if topic is None:
                    cond = self._cond
                else:
                    cond = self._topic_conds.setdefault(topic, threading.Condition(self._lock))
            result = check()
            if result or self._wall.monotonic() >= deadline:
                return result
            with self._lock:
                self._waiters += 1
                try:
                    self._ensure_tailer()
                    while self._mark(topic) == seq and not self._closed:
                        remaining = deadline - self._wall.monotonic()
                        if remaining <= 0:
                            return result
                        cond.wait(remaining)
                finally:
                    self._waiters -= 1
                if self._closed or self._interrupts != interrupts:
                    return result

    def waiting(self) -> int:
        """How many callers are blocked right now (for tests and metrics)."""
        with self._lock:
            return self._waiters

    def _ensure_tailer(self) -> None:
        # Called with self._lock held.
        if self._tailer is None and not self._closed:
            self._tailer = threading.Thread(target=self._tail, name=f"sqlite-tail:{self.path}", daemon=True)
            self._tailer.start()

    def _tail(self) -> None:
        conn: sqlite3.Connection | None = None
        last: int | None = None
        idle_since: float | None = None
        try:
            while True:
                with self._lock:
                    # Linger a little after the last waiter leaves: watch loops come straight
                    # back, and a restart costs a connection and a spurious wake-up.
                    now = self._wall.monotonic()
                    if self._waiters:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = now
                    if self._closed or (idle_since is not None and now - idle_since >= TAILER_LINGER):
                        self._tailer = None
                        return
                topics: Topics = None
                version: int | None
                try:
                    if conn is None:
                        conn = self.connect()
                    version = int(conn.execute("PRAGMA data_version").fetchone()[0])
                    if last is not None and version != last and self.changed_topics is not None:
                        topics = self.changed_topics(conn)
                except (sqlite3.Error, Unavailable) as exc:
                    log.warning("store tail of %s failed, retrying: %s", self.path, exc)
                    version, topics = last, None
                # The first reading counts as a change: a commit may have landed between a
                # waiter's query and this tailer starting.
                if last is None or version != last:
                    last = version
                    self.notify(topics)
                self._stop.wait(self.poll_seconds)
        finally:
            if conn is not None:
                conn.close()

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cond.notify_all()
            for cond in self._topic_conds.values():
                cond.notify_all()
        self._stop.set()
        with self._pool_lock:
            free, self._free = self._free, []
        for conn in free:
            conn.close()
