"""Conformance: the change log — watch ordering, resumption, blocking, wake-ups, compaction."""

from __future__ import annotations

import pytest

from forge.errors import Gone
from forge.models import Node, ObjectMeta
from forge.store.base import Store
from tests.store.store_helpers import Backend, Background, app, wait_until


def test_watch_returns_every_change_in_order(store: Store) -> None:
    """create, update, update_status, delete come back as ADDED, MODIFIED, MODIFIED, DELETED in order."""
    obj = store.create(app("hello"))
    obj.spec.replicas = 2
    obj = store.update(obj)
    obj.status.phase = "Ready"
    store.update_status(obj)
    store.delete("App", "hello")
    events = store.watch("App", 0, timeout=0)
    assert [(e.type, e.revision) for e in events] == [("ADDED", 1), ("MODIFIED", 2), ("MODIFIED", 3), ("DELETED", 4)]
    assert [e.object.metadata.resource_version for e in events] == [1, 2, 3, 4]
    assert events[1].object.spec.replicas == 2 and events[2].object.status.phase == "Ready"
    assert events[3].object.metadata.name == "hello"


def test_watch_resumes_after_since(store: Store) -> None:
    """Only changes with revision greater than since are returned."""
    for i in range(5):
        store.create(app(f"a{i}"))
    assert [e.object.metadata.name for e in store.watch("App", 3, timeout=0)] == ["a3", "a4"]
    assert store.watch("App", 5, timeout=0) == []


@pytest.mark.parametrize(
    ("kind", "names"),
    [("App", ["a1", "a2"]), ("nodes", ["n1"]), (None, ["a1", "n1", "a2"])],
    ids=["apps", "nodes-plural", "all-kinds"],
)
def test_watch_kind_filter(store: Store, kind: str | None, names: list[str]) -> None:
    """A kind filter keeps that kind's changes; None keeps all, still in revision order."""
    store.create(app("a1"))
    store.create(Node(metadata=ObjectMeta(name="n1")))
    store.create(app("a2"))
    assert [e.object.metadata.name for e in store.watch(kind, 0, timeout=0)] == names


def test_watch_batch_is_bounded(store: Store) -> None:
    """watch returns at most limit events; the caller resumes from the last revision."""
    for i in range(7):
        store.create(app(f"a{i}"))
    first = store.watch("App", 0, timeout=0, limit=4)
    rest = store.watch("App", first[-1].revision, timeout=0, limit=4)
    assert [e.revision for e in first + rest] == list(range(1, 8))


def test_watch_times_out_empty(store: Store) -> None:
    """With nothing newer than since, watch returns [] once the timeout passes."""
    store.create(app("hello"))
    assert store.watch("App", store.revision(), timeout=0.05) == []


def test_watch_ignores_other_kinds_while_blocking(store: Store) -> None:
    """Writes of another kind do not end a filtered watch early with nothing."""
    rev = store.revision()
    call = Background(lambda: store.watch("App", rev, timeout=10))
    call.start()
    wait_until(lambda: store.waiting() > 0)
    store.create(Node(metadata=ObjectMeta(name="n1")))
    store.create(app("hello"))
    assert [e.object.metadata.name for e in call.value()] == ["hello"]


def test_watch_wakes_on_write_from_another_thread(store: Store) -> None:
    """A blocked watch returns the write another thread makes."""
    rev = store.revision()
    call = Background(lambda: store.watch("App", rev, timeout=10))
    call.start()
    wait_until(lambda: store.waiting() > 0)
    store.create(app("hello"))
    events = call.value()
    assert [(e.type, e.object.metadata.name) for e in events] == [("ADDED", "hello")]


def test_watch_wakes_on_write_from_another_process(backend: Backend, store: Store) -> None:
    """A blocked watch returns writes made by another process on the same store."""
    rev = store.revision()
    call = Background(lambda: store.watch("App", rev, timeout=10))
    call.start()
    wait_until(lambda: store.waiting() > 0)
    proc = backend.writer("remote", 1)
    out, _ = proc.communicate(timeout=30)
    assert out.split() == ["remote-0"]
    events = call.value()
    assert [(e.type, e.object.metadata.name) for e in events] == [("ADDED", "remote-0")]


def test_watch_sees_other_store_instance(backend: Backend, store: Store) -> None:
    """Two store objects on one database (as in two workers) see each other's writes."""
    other = backend.open()
    try:
        rev = store.revision()
        call = Background(lambda: store.watch(None, rev, timeout=10))
        call.start()
        wait_until(lambda: store.waiting() > 0)
        other.create(app("elsewhere"))
        assert [e.object.metadata.name for e in call.value()] == ["elsewhere"]
    finally:
        other.close()


def test_compaction_makes_old_revisions_gone(store: Store) -> None:
    """After compact(keep=2), watching from before the kept window is Gone; from inside it works."""
    for i in range(6):
        store.create(app(f"a{i}"))
    assert store.compact(keep=2) == 4 == store.compacted_revision()
    with pytest.raises(Gone, match="3"):
        store.watch("App", 3, timeout=0)
    with pytest.raises(Gone):
        store.watch(None, 0, timeout=0)
    assert [e.revision for e in store.watch("App", 4, timeout=0)] == [5, 6]
    assert store.list("App")[0][0].metadata.name == "a0"


def test_compaction_never_moves_backwards(store: Store) -> None:
    """A later compact with a larger keep leaves the compacted revision where it was."""
    for i in range(5):
        store.create(app(f"a{i}"))
    assert store.compact(keep=1) == 4
    assert store.compact(keep=100) == 4
    assert store.compacted_revision() == 4


def test_fresh_store_watch_from_zero(store: Store) -> None:
    """A fresh store has revision 0, nothing compacted, and watch from 0 is valid."""
    assert (store.revision(), store.compacted_revision()) == (0, 0)
    assert store.watch(None, 0, timeout=0) == []
