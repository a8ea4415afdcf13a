"""The informer cache the runtime feeds from its watches, and the work queue's low-priority line."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from forge.clock import FakeClock, SystemClock
from forge.controllers.cache import CachedStore, InformerCache, cache_version, read_only
from forge.errors import NotFound
from forge.models import LABEL_APP, LABEL_NODE, App, Deployment, Instance
from forge.store.base import Store
from forge.workqueue import WorkQueue


def follow(cache: InformerCache, store: Store, kind: str, since: int) -> int:
    """Apply every change of ``kind`` after ``since``, as the runtime's watch does."""
    for ev in store.watch(kind, since=since, timeout=0):
        cache.apply(ev)
        since = ev.revision
    return since


def test_cache_lists_by_label_index_and_follows_the_watch(
        store: Store, make_app: Callable[..., App], make_deployment: Callable[..., Deployment],
        make_instance: Callable[..., Instance]) -> None:
    """Filled by one list, kept current by watch events; label selectors answer from the index."""
    for name in ("a", "b"):
        make_deployment(make_app(name), 1)
    make_instance("a-1", node="n1")
    cache = InformerCache(store, ["Instance"])
    rev = cache.fill("Instance")
    make_instance("b-1", node="n2")
    make_instance("a-1", index=1, node="n2")
    assert [i.metadata.name for i in cache.list(Instance, {LABEL_APP: "a"})[0]] == ["a-1-0"]
    follow(cache, store, "Instance", rev)
    assert [i.metadata.name for i in cache.list(Instance, {LABEL_APP: "a"})[0]] == ["a-1-0", "a-1-1"]
    assert [i.metadata.name for i in cache.scan(Instance, {LABEL_NODE: "n2"})] == ["a-1-1", "b-1-0"]
    assert cache.list(Instance, {LABEL_APP: "a", LABEL_NODE: "n2"})[0][0].metadata.name == "a-1-1"
    assert cache.list(Instance, {LABEL_APP: "zzz"})[0] == []
    assert [i.metadata.name for i in cache.list(Instance)[0]] == [i.metadata.name for i in store.list(Instance)[0]]


def test_cache_reads_are_copies(store: Store, make_app: Callable[..., App]) -> None:
    """get/list hand out objects the caller may mutate without touching what the cache holds."""
    make_app("a", domains=["a.example.com"])
    cache = InformerCache(store, ["App"])
    cache.fill("App")
    got = cache.get(App, "a")
    got.spec.domains.append("evil.example.com")
    got.metadata.labels["x"] = "y"
    assert cache.get(App, "a").spec.domains == ["a.example.com"]
    assert cache.list(App)[0][0].metadata.labels == {}
    with pytest.raises(NotFound):
        cache.get(App, "nope")


def test_cached_store_reads_its_own_writes_and_ignores_older_events(
        store: Store, make_app: Callable[..., App]) -> None:
    """A write through CachedStore is visible at once; the watch's older events do not undo it,
    and a delete stays deleted until the watch catches up with it."""
    make_app("a")
    cache = InformerCache(store, ["App"])
    rev = cache.fill("App")
    view = CachedStore(store, cache)
    app = view.get(App, "a")
    app.status.url = "http://a.example"
    written = view.update_status(app)
    assert view.get(App, "a").status.url == "http://a.example"
    before = cache_version(view, App)
    view.delete(App, "a")
    assert cache_version(view, App) != before
    with pytest.raises(NotFound):
        view.get(App, "a")
    follow(cache, store, "App", rev)  # the status write, then the delete
    with pytest.raises(NotFound):
        view.get(App, "a")
    assert written.metadata.resource_version > rev
    assert read_only(view, App) == []


def test_plain_store_reads_are_unchanged(store: Store, make_app: Callable[..., App]) -> None:
    """Outside the runtime (no cache) read_only lists the store and no memo is offered."""
    make_app("a")
    assert [a.metadata.name for a in read_only(store, App)] == ["a"]
    assert cache_version(store, App) is None


def test_queue_low_priority_keys_wait_behind_changes() -> None:
    """Resync keys are served after changed ones; a low key added again normally jumps ahead."""
    q = WorkQueue(SystemClock())
    for k in ("r1", "r2", "r3"):
        q.add(k, low=True)
    q.add("change")
    q.add("r3")
    q.add("r1", low=True)  # already waiting: no second entry
    assert q.depth() == 4
    assert [q.get(), q.get(), q.get(), q.get()] == ["change", "r3", "r1", "r2"]
    assert q.get(timeout=0.01) is None
    for k in ("change", "r1", "r2", "r3"):
        q.done(k)
    assert q.idle()


def test_queue_low_key_is_not_idle(clock: FakeClock) -> None:
    """A queue holding only low-priority keys is not idle (wait_idle must not stop early)."""
    q = WorkQueue(clock)
    q.add("r", low=True)
    assert not q.idle()
    assert q.get() == "r"
    q.done("r")
    assert q.idle()


def test_field_index_finds_unlabelled_records(store: Store, make_app: Callable[..., App],
                                              make_instance: Callable[..., Instance]) -> None:
    """scan_field by spec.app / spec.node also finds Instances nobody labelled; a plain store agrees."""
    from forge.controllers.cache import read_only_field
    from forge.models import InstanceSpec, ObjectMeta

    make_app("a")
    make_instance("a-1", node="n1")
    store.create(Instance(metadata=ObjectMeta(name="bare"), spec=InstanceSpec(
        app="a", deployment="a-1", node="n1", repo="acme/a", commit="a" * 40)))
    cache = InformerCache(store, ["Instance"])
    cache.fill("Instance")
    view = CachedStore(store, cache)
    for s in (view, store):
        assert [i.metadata.name for i in read_only_field(s, Instance, "spec.app", "a")] == ["a-1-0", "bare"]
        assert [i.metadata.name for i in read_only_field(s, Instance, "spec.node", "n1")] == ["a-1-0", "bare"]
        assert read_only_field(s, Instance, "spec.app", "b") == []
    assert [i.metadata.name for i in cache.scan(Instance, {LABEL_APP: "a"})] == ["a-1-0"]
