"""Helpers shared by the store tests (``from tests.store.store_helpers import …``)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from forge.clock import Clock, SystemClock
from forge.models import App, AppSpec, ObjectMeta
from forge.store.base import Store
from forge.store.factory import open_store
from forge.store.postgres import PostgresStore
from forge.store.sqlite import SqliteStore

WRITER = Path(__file__).with_name("writer.py")


@dataclass
class Backend:
    name: str
    url: str
    path: Path

    def open(self, clock: Clock | None = None) -> Store:
        if self.name == "sqlite":
            return SqliteStore(str(self.path), clock=clock or SystemClock())
        if self.name == "postgresql":
            return PostgresStore(self.url, clock=clock or SystemClock())
        return open_store(self.url)

    def writer(self, prefix: str, count: int) -> subprocess.Popen[str]:
        """Another process creating ``count`` Apps ``prefix-I``, printing each acknowledged name."""
        return subprocess.Popen(
            [sys.executable, str(WRITER), self.url, prefix, str(count)],
            stdout=subprocess.PIPE, text=True,
        )


def app(name: str, labels: dict[str, str] | None = None, repo: str = "acme/hello") -> App:
    return App(metadata=ObjectMeta(name=name, labels=labels or {}), spec=AppSpec(repo=repo))


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Test-side wait for a condition another thread brings about (fails the test on timeout)."""
    done = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if pred():
            return
        done.wait(0.005)
    raise AssertionError("condition not reached in time")


class Background(threading.Thread):
    """Run ``fn`` in a thread and keep its result or exception for the test."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the test, which re-raises it
            self.error = exc

    def value(self, timeout: float = 15.0) -> object:
        self.join(timeout)
        assert not self.is_alive(), "background call did not return"
        if self.error is not None:
            raise self.error
        return self.result
