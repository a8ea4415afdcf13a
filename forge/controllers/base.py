"""What every controller is, as far as the runtime is concerned.

A controller maps store changes to keys (``keys_for``), lists every key for a resync
(``all_keys``) and converges one key at a time (``reconcile``). It never sleeps: time is
a return value (``Result(requeue_after=...)``); raising retries with per-key back-off;
``TerminalError`` stops retries for that key until the next change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from forge.clock import Clock
from forge.config import Config
from forge.controllers.cache import read_only
from forge.events import EventRecorder
from forge.models import App
from forge.store.base import Store, WatchEvent


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


DONE = Result()


class Controller:
    name: ClassVar[str] = ""
    watches: ClassVar[tuple[str, ...]] = ()  # kinds whose changes wake this controller
    # The safety net only: the runtime's watches feed an informer cache and wake controllers on
    # every change, so a resync is a reconcile of every key with nothing to do. Every minute that
    # was 5,000 Apps × five controllers of idle work at 5,000 Apps (controller-runtime: 10 h).
    resync_seconds: ClassVar[float] = 600.0

    def __init__(
        self, store: Store, clock: Clock, config: Config, recorder: EventRecorder | None = None
    ) -> None:
        self.store, self.clock, self.config = store, clock, config
        self.recorder = recorder or EventRecorder(store, clock, source=self.name or type(self).__name__)

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        """Keys to reconcile after a change; default: the changed record's own name."""
        return (event.object.metadata.name,)

    def all_keys(self) -> Iterable[str]:
        raise NotImplementedError

    def reconcile(self, key: str) -> Result | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release outside resources (HTTP clients); the runtime calls it on shutdown."""


class AppKeyedController(Controller):
    """A controller whose key is an app name: an App change wakes its own name, any other
    record (Deployment, Instance, Secret) the ``spec.app`` it belongs to."""

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        obj = event.object
        return (obj.metadata.name,) if obj.kind == "App" else (obj.spec.app,)

    def all_keys(self) -> Iterable[str]:
        return sorted(a.metadata.name for a in read_only(self.store, App))
