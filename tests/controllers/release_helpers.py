"""Helpers for the rollout / rollback / health tests: the node agent's side of an Instance
(status reports written to the real store) and a store that crashes after N writes."""

from __future__ import annotations

from typing import Any

from forge.models import LABEL_DEPLOYMENT, Instance, Resource
from forge.store.base import Store


class Crash(Exception):
    """The control plane died mid-reconcile."""


class CrashingStore:
    """A real store that raises ``Crash`` instead of performing write number ``after + 1``."""

    WRITES = ("create", "update", "update_status", "delete")

    def __init__(self, inner: Store, after: int) -> None:
        self._inner, self.after, self.writes = inner, after, 0

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._inner, attr)
        if attr not in self.WRITES:
            return target

        def write(*args: Any, **kwargs: Any) -> Any:
            if self.writes >= self.after:
                raise Crash(f"crashed before write {self.writes + 1} ({attr})")
            self.writes += 1
            return target(*args, **kwargs)

        return write


def get(store: Store, kind: str, name: str) -> Any:
    return store.get(kind, name)


def instances(store: Store, deployment: str) -> list[Instance]:
    items, _ = store.list("Instance", {LABEL_DEPLOYMENT: deployment})
    return sorted(items, key=lambda i: i.metadata.name)  # type: ignore[return-value]


def report(store: Store, name: str, phase: str, ready: bool = False, reason: str = "", message: str = "",
           **extra: Any) -> Instance:
    """Write an Instance's status the way its node agent would."""
    inst = store.get("Instance", name)
    inst.status.phase = phase
    inst.status.ready = ready
    inst.status.reason = reason
    inst.status.message = message
    for k, v in extra.items():
        setattr(inst.status, k, v)
    return store.update_status(inst)  # type: ignore[return-value]


def serve_all(store: Store, deployment: str) -> list[Instance]:
    """Every Instance of the release that is asked to run reports Running and ready."""
    return [
        report(store, i.metadata.name, "Running", ready=True, port=20000 + n)
        for n, i in enumerate(instances(store, deployment)) if i.spec.desired == "Running"
    ]


def status_of(obj: Resource) -> dict[str, Any]:
    return obj.status.dump()  # type: ignore[no-any-return]
