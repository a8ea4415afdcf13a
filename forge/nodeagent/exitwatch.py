"""Learns the moment a supervised process exits, without polling: one thread waits on pidfds.

``pidfd_open`` works for any process (ours or adopted after an agent restart); the fd turns
readable when the process exits. The callback only enqueues the Instance key — the work loop
decides what the exit means.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class ExitWatcher:
    def __init__(self, on_exit: Callable[[str], None]) -> None:
        self.on_exit = on_exit
        self._sel = selectors.DefaultSelector()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._sel.register(self._r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._pending: list[tuple[int, str]] = []
        self._closed = False
        self.thread = threading.Thread(target=self._run, name="forge-exitwatch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def watch(self, pid: int, key: str) -> None:
        """Call ``on_exit(key)`` once ``pid`` has exited (at once when it already has)."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.on_exit(key)
            return
        with self._lock:
            self._pending.append((fd, key))
        os.write(self._w, b"x")

    def close(self) -> None:
        with self._lock:
            self._closed = True
        os.write(self._w, b"x")
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            for skey, _ in self._sel.select():
                if skey.data is None:
                    try:
                        os.read(self._r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                self._sel.unregister(skey.fd)
                os.close(skey.fd)
                self.on_exit(skey.data)
            with self._lock:
                pending, self._pending = self._pending, []
                closed = self._closed
            for fd, key in pending:
                self._sel.register(fd, selectors.EVENT_READ, key)
            if closed:
                for skey in list(self._sel.get_map().values()):
                    self._sel.unregister(skey.fd)
                    os.close(skey.fd)  # closes the wake pipe's read end too
                os.close(self._w)
                self._sel.close()
                return
