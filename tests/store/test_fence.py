"""Leader fencing inside the store (both backends): a write carrying a Fence lands only while
the Lease still names that holder at that generation."""

from __future__ import annotations

import pytest

from forge.errors import Fenced
from forge.models import App, AppSpec, Lease, LeaseSpec, ObjectMeta
from forge.store.base import Fence, Store


def lease(store: Store, holder: str, transitions: int) -> Lease:
    try:
        cur = store.get(Lease, "controllers-leader")
    except Exception:  # noqa: BLE001 - first call: none yet
        return store.create(Lease(metadata=ObjectMeta(name="controllers-leader"),
                                  spec=LeaseSpec(holder=holder, transitions=transitions)))
    cur.spec.holder, cur.spec.transitions = holder, transitions
    return store.update(cur)


def test_a_deposed_leaders_writes_are_refused(store: Store) -> None:
    lease(store, "a", 0)
    store.fence = Fence("controllers-leader", "a", 0)
    app = store.create(App(metadata=ObjectMeta(name="hello"), spec=AppSpec(repo="acme/hello")))
    app.spec.replicas = 2
    app = store.update(app)  # the leader writes
    lease(store, "b", 1)  # the Lease's own writes are the election's: never fenced
    rv = store.revision()
    app.spec.replicas = 3
    for write in (lambda: store.update(app), lambda: store.update_status(app), lambda: store.delete(App, "hello"),
                  lambda: store.create(App(metadata=ObjectMeta(name="other"), spec=AppSpec(repo="acme/o")))):
        with pytest.raises(Fenced, match="no longer leads"):
            write()
    assert store.revision() == rv  # nothing was written, not even a revision taken
    assert store.get(App, "hello").spec.replicas == 2
    store.fence = Fence("controllers-leader", "a", 2)  # the same holder, another generation: refused too
    lease(store, "a", 1)
    with pytest.raises(Fenced):
        store.update(store.get(App, "hello"))
    store.fence = Fence("controllers-leader", "a", 1)  # the current one writes
    store.update(store.get(App, "hello"))
    store.fence = None  # no fence (the API, agents' writes through it): no check
    store.delete(App, "hello")


def test_no_lease_at_all_refuses_a_fenced_write(store: Store) -> None:
    store.fence = Fence("controllers-leader", "a", 0)
    with pytest.raises(Fenced):
        store.create(App(metadata=ObjectMeta(name="hello"), spec=AppSpec(repo="acme/hello")))
