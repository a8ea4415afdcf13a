"""GC: release history limit, finished Instances, old Events and logs."""

from __future__ import annotations

import pytest

from forge.controllers.gc import EVENTS_KEY, GcController, GcSettings
from forge.events import EventRecorder
from forge.models import ObjectMeta, Secret, SecretSpec
from tests.controllers.conftest import snapshot


@pytest.fixture
def gc(store, clock, config) -> GcController:
    return GcController(store, clock, config, settings=GcSettings(history_limit=2))


def names(store, kind: str) -> set[str]:
    return {o.metadata.name for o in store.list(kind)[0]}


def set_live(store, app: str, dep: str) -> None:
    a = store.get("App", app)
    a.status.live_deployment = dep
    store.update_status(a)


def test_history_limit_keeps_newest_and_live(store, clock, gc, make_app, make_deployment, make_instance) -> None:
    """Only the newest N finished releases stay; the live and in-flight ones are never touched."""
    make_app("web")
    for n in range(1, 6):
        make_deployment("web", n, phase="Superseded" if n != 3 else "Failed")
        make_instance(f"web-{n}", 0, node="n1", phase="Stopped", desired="Stopped")
    make_deployment("web", 6, phase="Live")
    make_instance("web-6", 0, node="n1", phase="Running")
    make_deployment("web", 7, phase="Starting")
    set_live(store, "web", "web-6")
    clock.advance(120)
    gc.reconcile("web")
    assert names(store, "Deployment") == {"web-4", "web-5", "web-6", "web-7"}
    assert names(store, "Instance") == {"web-6-0"}  # the kept releases' stopped Instances are old too
    before = snapshot(store)
    gc.reconcile("web")
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("phase", "desired", "dep_phase", "age", "deleted"),
    [
        ("Stopped", "Stopped", "Superseded", 120, True),
        ("Lost", "Stopped", "Failed", 120, True),
        ("Stopped", "Stopped", "Superseded", 10, False),
        ("Lost", "Running", "Superseded", 120, False),
        ("Running", "Running", "Superseded", 120, False),
        ("Stopped", "Stopped", "Live", 120, False),
        ("Failed", "Stopped", None, 120, True),
    ],
    ids=["stopped-old", "lost", "too-young", "still-wanted", "running", "live-release", "deployment-gone"],
)
def test_finished_instances(store, clock, gc, make_app, make_deployment, make_instance,
                            phase, desired, dep_phase, age, deleted) -> None:
    """Finished Instances of finished or vanished Deployments go once a minute old."""
    make_app("web")
    if dep_phase:
        make_deployment("web", 1, phase=dep_phase)
    make_instance("web-1", 0, node="n1", phase=phase, desired=desired)
    clock.advance(age)
    gc.reconcile("web")
    assert ("web-1-0" not in names(store, "Instance")) == deleted


def test_deleted_app_keeps_no_history(store, clock, gc, make_deployment, make_instance) -> None:
    """Finished releases of an App that no longer exists are removed with their Instances."""
    make_deployment("old", 1, phase="Superseded")
    make_instance("old-1", 0, node="n1", phase="Stopped", desired="Stopped")
    clock.advance(120)
    assert "old" in set(gc.all_keys())
    gc.reconcile("old")
    assert names(store, "Deployment") == set() and names(store, "Instance") == set()


def test_old_events_and_logs_pruned(store, clock, gc, make_app) -> None:
    """Events last seen over an hour ago and logs over a day old are deleted."""
    app = make_app("web")
    rec = EventRecorder(store, clock, "test")
    rec.record(app, "Normal", "Old", "old news")
    store.append_logs("web-1-0", "web", "web-1", "app", [(0, clock.now_iso(), "ancient line")])
    clock.advance(3000)
    rec.record(app, "Normal", "Fresh", "news")
    clock.advance(700)
    store.append_logs("web-1-0", "web", "web-1", "app", [(1, clock.now_iso(), "recent line")])
    gc.reconcile(EVENTS_KEY)
    assert [e.spec.reason for e in store.list("Event")[0]] == ["Fresh"]
    clock.advance(24 * 3600 - 100)
    gc.reconcile(EVENTS_KEY)
    assert [line.line for line in store.read_logs("web")] == ["recent line"]


def test_other_kinds_untouched(store, clock, gc, make_app) -> None:
    """GC never deletes Apps or Secrets."""
    make_app("web")
    store.create(Secret(metadata=ObjectMeta(name="web"), spec=SecretSpec(app="web")))
    clock.advance(10 * 24 * 3600)
    for key in gc.all_keys():
        gc.reconcile(key)
    assert names(store, "App") == {"web"} and names(store, "Secret") == {"web"}


def test_drains_go_with_their_app(store, clock, gc, make_app) -> None:
    """A deleted App's log drains are deleted; a new App of the same name does not inherit the
    old one's; the drains of a live App stay — and a second pass changes nothing."""
    from forge.models import LogDrain, OwnerRef

    def drain(name: str, app, url: str = "x") -> None:
        store.create(LogDrain(metadata=ObjectMeta(name=name, labels={"forge.dev/app": app.metadata.name},
                                                  owner_ref=OwnerRef(kind="App", name=app.metadata.name,
                                                                     uid=app.metadata.uid)),
                              spec={"app": app.metadata.name, "url": url, "masked_url": url}))

    keep, gone = make_app("keep"), make_app("gone")
    drain("keep-aaaaaaaaaa", keep)
    drain("gone-bbbbbbbbbb", gone)
    store.delete("App", "gone")
    reborn = make_app("gone")
    assert reborn.metadata.uid != gone.metadata.uid
    drain("gone-cccccccccc", reborn)
    for key in gc.all_keys():
        gc.reconcile(key)
    assert names(store, "LogDrain") == {"keep-aaaaaaaaaa", "gone-cccccccccc"}
    store.delete("App", "gone")
    assert "gone" in set(gc.all_keys())
    for _ in range(2):
        for key in gc.all_keys():
            gc.reconcile(key)
    assert names(store, "LogDrain") == {"keep-aaaaaaaaaa"}
