"""A deduplicating work queue with timers: the controllers' runtime and the node agent both
take their "do this now / later" from it.

Semantics follow controller-runtime's workqueue: a key is processed by one worker at a time,
adding a queued key is a no-op, a key added while it is being processed runs again after
``done``. ``add_after`` keeps the earliest due time per key in a heap; workers block on a
Condition until the next key is ready or the next timer is due — no fixed-interval polling.

Keys added with ``low=True`` (a start's or a resync's every key) wait behind the others, as in
controller-runtime's priority queue: 5,000 resync keys must not stand in front of the one App
somebody just deployed. A low key added again normally moves to the front line.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque

from forge.clock import Clock


class WorkQueue:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._low: deque[str] = deque()
        self._queued: set[str] = set()
        self._queued_low: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._closed = False

    def add(self, key: str, low: bool = False) -> None:
        with self._cond:
            self._add_locked(key, low)

    def _add_locked(self, key: str, low: bool = False) -> None:
        if self._closed:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        if low:
            if key not in self._queued_low:
                self._queued_low.add(key)
                self._low.append(key)
                self._cond.notify()
            return
        self._queued_low.discard(key)  # promoted: its place in the low line is skipped when reached
        self._queued.add(key)
        self._queue.append(key)
        self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        """Add ``key`` after ``delay`` seconds; an earlier pending timer for it wins."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            due = self.clock.monotonic() + delay
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, key))
            self._cond.notify()

    def fire_due(self) -> float | None:
        """Move due timers to the queue; seconds until the next timer (None when none)."""
        with self._cond:
            return self._fire_locked()

    def _fire_locked(self) -> float | None:
        now = self.clock.monotonic()
        while self._heap:
            due, key = self._heap[0]
            if self._due.get(key) != due:
                heapq.heappop(self._heap)  # superseded by an earlier timer for the same key
                continue
            if due > now:
                return due - now
            heapq.heappop(self._heap)
            del self._due[key]
            self._add_locked(key)
        return None

    def get(self, timeout: float | None = None) -> str | None:
        """Next key to process (marking it in progress), or None on shutdown / timeout."""
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        with self._cond:
            while True:
                wait = self._fire_locked()
                if self._closed:
                    return None
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                while self._low:
                    key = self._low.popleft()
                    if key not in self._queued_low:
                        continue  # promoted (and served) meanwhile
                    self._queued_low.discard(key)
                    self._processing.add(key)
                    return key
                if deadline is not None:
                    left = deadline - self.clock.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_locked(key)

    def pending_timer(self, key: str) -> float | None:
        """Seconds until ``key``'s timer fires, if one is set."""
        with self._cond:
            due = self._due.get(key)
            return None if due is None else due - self.clock.monotonic()

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return self.depth()

    def depth(self) -> int:
        """Keys ready to be handed out (not those waiting on a timer, not those running)."""
        with self._cond:
            return len(self._queue) + len(self._queued_low)

    def delayed(self) -> int:
        """Keys waiting on a timer."""
        with self._cond:
            return len(self._due)

    def idle(self) -> bool:
        """Nothing queued or running (keys waiting on a timer do not count)."""
        with self._cond:
            return not self._queue and not self._queued_low and not self._processing and not self._dirty
