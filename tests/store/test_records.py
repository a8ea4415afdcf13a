"""Conformance: records, revisions, optimistic concurrency, generation rules (every backend)."""

from __future__ import annotations

import threading
import uuid

import pytest

from forge.clock import FakeClock, parse_iso
from forge.errors import AlreadyExists, Conflict, Invalid, NotFound
from forge.models import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    Node,
    ObjectMeta,
    OwnerRef,
)
from forge.store.base import Store
from tests.store.store_helpers import Backend, app

COMMIT = "a" * 40


def deployment(name: str, app_name: str = "hello") -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, labels={"forge.dev/app": app_name}),
        spec=DeploymentSpec(app=app_name, commit=COMMIT),
    )


def instance(name: str, labels: dict[str, str]) -> Instance:
    return Instance(
        metadata=ObjectMeta(name=name, labels=labels),
        spec=InstanceSpec(app="hello", deployment="hello-1", repo="acme/hello", commit=COMMIT),
    )


def test_create_assigns_metadata(clocked_store: Store, clock: FakeClock) -> None:
    """create sets uid, resourceVersion, generation 1 and both timestamps from the clock."""
    out = clocked_store.create(app("hello"))
    m = out.metadata
    assert uuid.UUID(m.uid).version == 4
    assert m.resource_version == clocked_store.revision() == 1
    assert m.generation == 1
    assert m.created_at == m.updated_at == clock.now_iso()
    assert clocked_store.get("App", "hello") == out


def test_create_ignores_caller_metadata(store: Store) -> None:
    """Caller-supplied uid, version and generation are replaced by the store's own."""
    obj = app("hello")
    obj.metadata.uid, obj.metadata.resource_version, obj.metadata.generation = "mine", 77, 9
    out = store.create(obj)
    assert (out.metadata.uid != "mine", out.metadata.resource_version, out.metadata.generation) == (True, 1, 1)


def test_create_taken_name_raises_already_exists(store: Store) -> None:
    """A second create of the same kind and name is AlreadyExists and takes no revision."""
    store.create(app("hello"))
    with pytest.raises(AlreadyExists, match="hello"):
        store.create(app("hello", repo="acme/other"))
    assert store.revision() == 1
    assert store.get("App", "hello").spec.repo == "acme/hello"


def test_same_name_in_different_kinds(store: Store) -> None:
    """Names are unique per kind only."""
    store.create(app("hello"))
    store.create(Node(metadata=ObjectMeta(name="hello")))
    assert store.get("Node", "hello").kind == "Node"
    assert store.get("App", "hello").kind == "App"


@pytest.mark.parametrize("kind", ["App", "app", "apps"], ids=["kind", "lower", "plural"])
def test_kind_spellings_resolve(store: Store, kind: str) -> None:
    """Kinds are accepted as Kind, lowercase kind or plural."""
    store.create(app("hello"))
    assert store.get(kind, "hello").metadata.name == "hello"
    assert [o.metadata.name for o in store.list(kind)[0]] == ["hello"]


def test_unknown_kind_is_invalid(store: Store) -> None:
    """An unknown kind is Invalid, never an SQL error."""
    with pytest.raises(Invalid, match="Gizmo"):
        store.get("Gizmo", "x")


@pytest.mark.parametrize(
    "op",
    [
        lambda s: s.get("App", "nope"),
        lambda s: s.update(app("nope")),
        lambda s: s.update_status(app("nope")),
        lambda s: s.delete("App", "nope"),
    ],
    ids=["get", "update", "update_status", "delete"],
)
def test_missing_record_raises_not_found(store: Store, op) -> None:
    """Every operation on a missing record is NotFound naming it."""
    with pytest.raises(NotFound, match="nope"):
        op(store)


def test_list_sorted_by_name_with_current_revision(store: Store) -> None:
    """list returns the kind's records sorted by name and the store's current revision."""
    for name in ["b", "c", "a"]:
        store.create(app(name))
    store.create(Node(metadata=ObjectMeta(name="n1")))
    items, rev = store.list("App")
    assert [o.metadata.name for o in items] == ["a", "b", "c"]
    assert rev == store.revision() == 4


SELECTOR_CASES = [
    ({}, ["i-a1", "i-a2", "i-b1", "i-none"]),
    ({"forge.dev/app": "a"}, ["i-a1", "i-a2"]),
    ({"forge.dev/app": "a", "forge.dev/node": "n2"}, ["i-a2"]),
    ({"forge.dev/node": "n1"}, ["i-a1", "i-b1"]),
    ({"forge.dev/app": "zzz"}, []),
    ({"missing": ""}, []),
    ({"tier": ""}, ["i-none"]),
    ({'bad"key': "a"}, []),
]


@pytest.mark.parametrize(
    ("selector", "names"),
    SELECTOR_CASES,
    ids=["none", "one-term", "two-terms", "other-key", "no-match", "absent-key", "empty-value", "quoted-key"],
)
def test_list_label_selector(store: Store, selector: dict[str, str], names: list[str]) -> None:
    """A selector keeps exactly the records whose labels hold every term."""
    store.create(instance("i-a1", {"forge.dev/app": "a", "forge.dev/node": "n1"}))
    store.create(instance("i-a2", {"forge.dev/app": "a", "forge.dev/node": "n2"}))
    store.create(instance("i-b1", {"forge.dev/app": "b", "forge.dev/node": "n1"}))
    store.create(instance("i-none", {"tier": ""}))
    items, _ = store.list("Instance", selector)
    assert [o.metadata.name for o in items] == names


def test_list_selector_follows_label_updates(store: Store) -> None:
    """After labels change, selectors match the new labels, not the old."""
    obj = store.create(instance("i-1", {"forge.dev/app": "a"}))
    obj.metadata.labels = {"forge.dev/app": "a", "forge.dev/node": "n9"}
    store.update(obj)
    assert [o.metadata.name for o in store.list("Instance", {"forge.dev/node": "n9"})[0]] == ["i-1"]


def test_revision_is_global_and_gap_free(store: Store) -> None:
    """Every write of any kind takes exactly the next revision."""
    revs = [store.create(app("hello")).metadata.resource_version]
    revs.append(store.create(deployment("hello-1")).metadata.resource_version)
    d = store.get("Deployment", "hello-1")
    d.status.phase = "Building"
    revs.append(store.update_status(d).metadata.resource_version)
    a = store.get("App", "hello")
    a.spec.replicas = 3
    revs.append(store.update(a).metadata.resource_version)
    revs.append(store.delete("Deployment", "hello-1").metadata.resource_version)
    assert revs == [1, 2, 3, 4, 5]
    assert store.revision() == 5


@pytest.mark.parametrize(
    "op",
    [
        lambda s, o: s.update(o),
        lambda s, o: s.update_status(o),
        lambda s, o: s.delete("App", o.metadata.name, o.metadata.resource_version),
    ],
    ids=["update", "update_status", "delete"],
)
def test_stale_resource_version_conflicts(store: Store, op) -> None:
    """A write carrying an old resourceVersion is a Conflict naming the record and both versions."""
    old = store.create(app("hello"))
    cur = store.get("App", "hello")
    cur.spec.replicas = 2
    store.update(cur)
    with pytest.raises(Conflict) as err:
        op(store, old)
    assert "App" in err.value.message and "hello" in err.value.message
    assert "1" in err.value.message and "2" in err.value.message
    assert store.get("App", "hello").metadata.resource_version == 2


@pytest.mark.parametrize(
    ("force", "version", "ok"),
    [(True, 0, True), (False, 0, False), (True, 99, False), (False, 99, False)],
    ids=["force-zero", "zero-without-force", "force-stale", "stale"],
)
def test_force_update_only_skips_check_for_version_zero(store: Store, force: bool, version: int, ok: bool) -> None:
    """update(force=True) with resourceVersion 0 is unconditional; anything else is checked."""
    store.create(app("hello"))
    obj = app("hello", repo="acme/forced")
    obj.metadata.resource_version = version
    if ok:
        assert store.update(obj, force=force).spec.repo == "acme/forced"
    else:
        with pytest.raises(Conflict):
            store.update(obj, force=force)


def test_concurrent_updates_exactly_one_wins(store: Store) -> None:
    """Eight threads updating from the same read: one succeeds, seven get Conflict."""
    base = store.create(app("hello"))
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        obj = base.copy_deep()
        obj.spec.replicas = i + 1
        barrier.wait()
        try:
            store.update(obj)
            result = "ok"
        except Conflict:
            result = "conflict"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    assert store.get("App", "hello").metadata.resource_version == 2


GENERATION_CASES = [
    ("spec-change", lambda o: setattr(o.spec, "replicas", 5), 2),
    ("labels-only", lambda o: o.metadata.labels.update(team="x"), 1),
    ("no-change", lambda o: None, 1),
    ("owner-ref-only", lambda o: setattr(o.metadata, "owner_ref", OwnerRef(kind="App", name="x")), 1),
]


@pytest.mark.parametrize(("change", "generation"), [c[1:] for c in GENERATION_CASES], ids=[c[0] for c in GENERATION_CASES])
def test_generation_bumps_only_on_spec_change(store: Store, change, generation: int) -> None:
    """update bumps generation exactly when spec changed; resourceVersion always moves."""
    obj = store.create(app("hello"))
    change(obj)
    out = store.update(obj)
    assert out.metadata.generation == generation
    assert out.metadata.resource_version == 2


def test_update_status_writes_status_only(store: Store) -> None:
    """update_status stores status, ignores spec and labels, and never bumps generation."""
    obj = store.create(app("hello", labels={"a": "1"}))
    obj.status.phase = "Ready"
    obj.status.observed_generation = 1
    obj.spec.replicas = 9
    obj.metadata.labels = {"a": "2"}
    out = store.update_status(obj)
    got = store.get("App", "hello")
    assert got == out
    assert (got.status.phase, got.status.observed_generation) == ("Ready", 1)
    assert (got.spec.replicas, got.metadata.labels, got.metadata.generation) == (1, {"a": "1"}, 1)


def test_update_keeps_stored_status(store: Store) -> None:
    """update writes spec and metadata but keeps the status a controller stored."""
    obj = store.create(app("hello"))
    obj.status.live_deployment = "hello-1"
    obj = store.update_status(obj)
    stale_view = obj.copy_deep()
    stale_view.status.live_deployment = None
    stale_view.spec.replicas = 4
    out = store.update(stale_view)
    assert out.status.live_deployment == "hello-1"
    assert store.get("App", "hello").spec.replicas == 4


def test_update_writes_owner_ref_and_deletion_timestamp(store: Store) -> None:
    """update sets and clears ownerRef and deletionTimestamp; uid and createdAt never change."""
    created = store.create(app("hello"))
    obj = created.copy_deep()
    obj.metadata.owner_ref = OwnerRef(kind="App", name="parent", uid="u")
    obj.metadata.deletion_timestamp = "2030-01-01T00:00:00.000Z"
    obj.metadata.uid, obj.metadata.created_at = "forged", "1999-01-01T00:00:00.000Z"
    out = store.update(obj)
    assert out.metadata.owner_ref == OwnerRef(kind="App", name="parent", uid="u")
    assert out.metadata.deletion_timestamp == "2030-01-01T00:00:00.000Z"
    assert (out.metadata.uid, out.metadata.created_at) == (created.metadata.uid, created.metadata.created_at)
    out.metadata.owner_ref, out.metadata.deletion_timestamp = None, None
    cleared = store.update(out)
    assert cleared.metadata.owner_ref is None and cleared.metadata.deletion_timestamp is None


def test_delete_returns_last_state_with_delete_revision(store: Store) -> None:
    """delete removes the record and returns it as it was, stamped with the delete's revision."""
    obj = store.create(app("hello"))
    obj.status.url = "https://hello.example.com"
    store.update_status(obj)
    gone = store.delete("App", "hello")
    assert gone.metadata.resource_version == 3 == store.revision()
    assert gone.status.url == "https://hello.example.com"
    with pytest.raises(NotFound):
        store.get("App", "hello")
    assert store.list("App")[0] == []
    assert store.create(app("hello")).metadata.uid != gone.metadata.uid


def test_delete_with_current_version_succeeds(store: Store) -> None:
    """delete with the current resourceVersion as precondition succeeds."""
    obj = store.create(app("hello"))
    assert store.delete("App", "hello", obj.metadata.resource_version).metadata.name == "hello"


def test_returned_objects_are_copies(store: Store) -> None:
    """Mutating what the store returned (or the object passed in) never changes what is stored."""
    given = app("hello", labels={"x": "1"})
    out = store.create(given)
    assert given.metadata.resource_version == 0 and given.metadata.uid == ""
    out.spec.replicas = 50
    out.metadata.labels["x"] = "changed"
    got = store.get("App", "hello")
    got.status.phase = "Mutated"
    listed = store.list("App")[0][0]
    assert (listed.spec.replicas, listed.metadata.labels, listed.status.phase) == (1, {"x": "1"}, "")


def test_times_are_set_by_the_store_clock(clocked_store: Store, clock: FakeClock) -> None:
    """createdAt stays put; updatedAt follows the clock on update and status writes."""
    created = clocked_store.create(app("hello"))
    clock.advance(5)
    obj = created.copy_deep()
    obj.spec.replicas = 2
    updated = clocked_store.update(obj)
    clock.advance(5)
    status = clocked_store.update_status(updated)
    times = [parse_iso(t) for t in (created.metadata.created_at, updated.metadata.updated_at, status.metadata.updated_at)]
    assert times == sorted(times) and times[2] - times[0] == pytest.approx(10, abs=0.01)
    assert status.metadata.created_at == created.metadata.created_at


def test_revisions_unique_across_processes(backend: Backend, store: Store) -> None:
    """Two other processes and this one writing at once get distinct, gap-free revisions."""
    procs = [backend.writer(f"p{i}", 15) for i in range(2)]
    mine = [store.create(app(f"main-{i}")).metadata.resource_version for i in range(15)]
    for p in procs:
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0 and len(out.split()) == 15
    items, rev = store.list("App")
    assert rev == 45 and len(items) == 45
    assert sorted(o.metadata.resource_version for o in items) == list(range(1, 46))
    assert mine == sorted(mine)
