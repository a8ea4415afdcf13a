"""Wake-ups on new log lines: inotify on the node's log directories (Linux, through libc).

The drains sleep until a writer appends to a segment of a watched Instance (``IN_MODIFY``) or a
new Instance directory or segment appears; nothing looks at the files on a timer. Events are
read in bursts and delivered at most ``COALESCE_SECONDS`` apart per burst, so a flooding app
costs the agent a bounded number of wake-ups a second, not one per write.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
EVENT = struct.Struct("iIII")
COALESCE_SECONDS = 0.05


class Notifier:
    """Calls ``on_change(instance)`` when the logs of ``logs_dir/INSTANCE`` grow (or go)."""

    def __init__(self, logs_dir: Path, on_change: Callable[[str], None], stop: threading.Event) -> None:
        self.logs_dir, self.on_change, self.stop = Path(logs_dir), on_change, stop
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1: " + os.strerror(ctypes.get_errno()))
        self.fd = fd
        self._wds: dict[int, str] = {}  # watch descriptor → instance ("" for logs_dir itself)
        self._closed = threading.Event()
        self._wake_r, self._wake_w = os.pipe()  # close() wakes the reader: no timed wait
        self.thread = threading.Thread(target=self._run, name="forge-drain-notify", daemon=True)

    def start(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._add(str(self.logs_dir), "", IN_CREATE | IN_MOVED_TO | IN_ONLYDIR)
        for entry in sorted(os.listdir(self.logs_dir)):
            self._watch_instance(entry)
        self.thread.start()

    def close(self) -> None:
        self._closed.set()
        os.write(self._wake_w, b"x")
        self.thread.join(timeout=2)
        for fd in (self.fd, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _add(self, path: str, instance: str, mask: int) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("cannot watch %s for log drains: %s", path, os.strerror(err))
            return
        self._wds[wd] = instance

    def _watch_instance(self, name: str) -> None:
        path = self.logs_dir / name
        if path.is_dir():
            self._add(str(path), name, IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF)

    def _run(self) -> None:
        while not (self.stop.is_set() or self._closed.is_set()):
            ready, _, _ = select.select([self.fd, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            changed: set[str] = set()
            while True:
                try:
                    data = os.read(self.fd, 64 * 1024)
                except BlockingIOError:
                    break
                except OSError:
                    return
                changed |= self._parse(data)
            for name in sorted(changed):
                self.on_change(name)
            # Let a burst of appends coalesce into the next read (bounded wake-ups under a flood).
            self._closed.wait(COALESCE_SECONDS)

    def _parse(self, data: bytes) -> set[str]:
        out: set[str] = set()
        pos = 0
        while pos + EVENT.size <= len(data):
            wd, mask, _cookie, length = EVENT.unpack_from(data, pos)
            raw = data[pos + EVENT.size : pos + EVENT.size + length].rstrip(b"\0")
            pos += EVENT.size + length
            if mask & IN_IGNORED:
                self._wds.pop(wd, None)
                continue
            owner = self._wds.get(wd)
            if owner is None:
                continue
            if owner == "":
                if mask & IN_ISDIR and raw:
                    name = os.fsdecode(raw)
                    self._watch_instance(name)
                    out.add(name)
                continue
            out.add(owner)
        return out
