"""Notifications: failures found in the records become one Notification each, delivered once to
a real receiver on loopback through 500s, 429 + Retry-After and controller restarts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from forge.api.notify import build_notifier
from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.notify import DeliveryFailed, NotifyController, NotifyDeliveryController
from forge.models import (
    App,
    Deployment,
    Notification,
    Notifier,
    ObjectMeta,
    OwnerRef,
    set_condition,
)
from forge.notify import ERROR_RATE_CHECK_SECONDS, HORIZON_SECONDS, RETAIN_SECONDS
from forge.release import rollback_release
from forge.secrets import Keyring
from forge.store.base import Store
from tests.controllers.conftest import events_for
from tests.receiver import Receiver

SECRET_PATH = "/services/T000/B000/s3cr3tT0k3nV4lu3xyz"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def add_notifier(store: Store, config: Config) -> Callable[..., Notifier]:
    def add(app: str, url: str, fmt: str = "generic", events: list[str] | None = None) -> Notifier:
        owner = OwnerRef(kind="App", name=app, uid=store.get(App, app).metadata.uid) if app else None
        n = build_notifier(Keyring.load(config), app, url, fmt, events, owner)  # type: ignore[arg-type]
        return store.create(n)  # type: ignore[return-value]

    return add


def fail(
    store: Store, clock: FakeClock, name: str, reason: str = "BuildFailed", message: str = ""
) -> Deployment:
    """End a release as the rollout controller does (its fields, written here as a stand-in)."""
    dep = store.get(Deployment, name)
    dep.status.phase, dep.status.reason = "Failed", reason
    dep.status.message = message or f"build of {name} failed: exit 1"
    dep.status.finished_time = clock.now_iso()
    return store.update_status(dep)  # type: ignore[return-value]


def notes(store: Store) -> list[Notification]:
    return sorted(store.list(Notification)[0], key=lambda n: n.metadata.name)  # type: ignore[arg-type]


def test_one_failure_is_one_message_through_500_429_and_restarts(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    receiver: Receiver,
    add_notifier: Any,
) -> None:
    """A failed build → one Notification; 500, then 429 Retry-After 30, then 200 across three
    delivery-controller restarts and two notify restarts → exactly one accepted message."""
    app = make_app("hello")
    make_deployment(app, 1, phase="Building")
    add_notifier("hello", receiver.url(SECRET_PATH))
    fail(store, clock, "hello-1", message="npm ERR! missing script: build")
    receiver.script = [(500, {}), (429, {"Retry-After": "30"}), (200, {})]

    NotifyController(store, clock, config).reconcile("hello")
    NotifyController(store, clock, config).reconcile("hello")  # a restart makes nothing twice
    assert [n.metadata.name for n in notes(store)] == ["hello-1.deployfailed"]

    with pytest.raises(DeliveryFailed) as err:
        NotifyDeliveryController(store, clock, config).reconcile("hello-1.deployfailed")
    assert SECRET_PATH not in str(err.value) and "500" in str(err.value)
    d = notes(store)[0].status.deliveries
    assert [(v.state, v.attempts) for v in d.values()] == [("Pending", 1)]

    res = NotifyDeliveryController(store, clock, config).reconcile("hello-1.deployfailed")  # restarted
    assert res is not None and res.requeue_after == pytest.approx(30)
    # restarted again before the receiver's Retry-After: nothing is sent, the wait is kept
    res = NotifyDeliveryController(store, clock, config).reconcile("hello-1.deployfailed")
    assert res is not None and res.requeue_after == pytest.approx(30)
    assert len(receiver.requests) == 2
    clock.advance(30)
    NotifyDeliveryController(store, clock, config).reconcile("hello-1.deployfailed")
    NotifyDeliveryController(store, clock, config).reconcile("hello-1.deployfailed")  # after: nothing
    NotifyController(store, clock, config).reconcile("hello")

    got = receiver.wait_for(3, timeout=5)
    assert [r.answered for r in got] == [500, 429, 200]
    assert len({r.headers["idempotency-key"] for r in got}) == 1  # a receiver can drop repeats
    body = got[-1].body
    assert body["forge"]["event"] == "DeployFailed" and body["forge"]["release"] == "hello-1"
    assert body["forge"]["reason"] == "BuildFailed" and "missing script" in body["forge"]["message"]
    assert body["forge"]["url"] == f"{config.dashboard_url}/ui/index.html#/apps/hello"
    assert "BuildFailed" in body["text"] and body["blocks"]
    note = notes(store)[0]
    assert note.status.phase == "Delivered" and note.status.finished_time is not None
    assert [n.metadata.name for n in notes(store)] == ["hello-1.deployfailed"]

    clock.advance(RETAIN_SECONDS)  # kept a day, then gone — and never made again
    NotifyDeliveryController(store, clock, config).reconcile("hello-1.deployfailed")
    NotifyController(store, clock, config).reconcile("hello")
    assert notes(store) == [] and len(receiver.requests) == 3


def test_slack_format_is_text_and_blocks_only(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    receiver: Receiver,
    add_notifier: Any,
) -> None:
    """A Slack notifier gets {text, blocks} with app, release, commit, reason and the dashboard link."""
    app = make_app("hello")
    dep = make_deployment(app, 2, phase="Building")
    add_notifier("", receiver.url(), fmt="slack")  # install-wide
    fail(store, clock, "hello-2", reason="ProgressDeadlineExceeded", message="no <ready> instance & more")
    NotifyController(store, clock, config).reconcile("hello")
    NotifyDeliveryController(store, clock, config).reconcile("hello-2.deployfailed")
    (got,) = receiver.wait_for(1, timeout=5)
    assert set(got.body) == {"text", "blocks"}
    flat = repr(got.body["blocks"])
    for want in ("hello-2", dep.spec.commit[:12], "ProgressDeadlineExceeded", "/ui/index.html#/apps/hello"):
        assert want in flat
    assert "&lt;ready&gt; instance &amp; more" in flat  # app text cannot inject Slack markup


def rolled_back(store: Store, clock: FakeClock, name: str, why: str) -> Deployment:
    dep = store.get(Deployment, name)
    set_condition(dep.status, "RolledBack", "True", "RolledBack", why, clock.now_iso())
    return store.update_status(dep)  # type: ignore[return-value]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("build-failed", ["hello-2.deployfailed"]),
        ("cancelled", []),
        ("old-failure", []),
        ("auto-rollback", ["hello-3.rolledback"]),
        ("manual-rollback", ["hello-3.rolledback"]),
        ("crash-once", []),
        ("crash-loop", ["hello-2.crashloop."]),
        ("other-app-notifier", []),
        ("events-filter", []),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_what_makes_a_notification(
    case: str,
    expected: list[str],
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    make_instance: Any,
    add_notifier: Any,
) -> None:
    """Each failure kind makes its one Notification; what is not a failure, too old, or heard by
    no notifier makes none; a second reconcile changes nothing."""
    app = make_app("hello")
    make_app("other")
    one = make_deployment(app, 1, phase="Superseded", live_time=clock.now_iso())
    two = make_deployment(app, 2, phase="Building")
    url = "https://hooks.example/abc/def/0123456789"
    if case == "other-app-notifier":
        add_notifier("other", url)
    elif case == "events-filter":
        add_notifier("hello", url, events=["CrashLoop"])
    else:
        add_notifier("hello", url)
    if case in ("build-failed", "other-app-notifier", "events-filter"):
        fail(store, clock, "hello-2")
    elif case == "cancelled":
        dep = store.get(Deployment, "hello-2")
        dep.status.phase, dep.status.finished_time = "Cancelled", clock.now_iso()
        store.update_status(dep)
    elif case == "old-failure":
        fail(store, clock, "hello-2")
        clock.advance(HORIZON_SECONDS + 1)
    elif case in ("auto-rollback", "manual-rollback"):
        dep = store.get(Deployment, "hello-2")
        dep.status.phase, dep.status.live_time = "Live", clock.now_iso()
        store.update_status(dep)
        rolled_back(store, clock, "hello-2", "failed 2 times in 12s (restarts or failing checks)")
        store.create(rollback_release(app, 3, one, owned=case == "auto-rollback"))
    else:  # the live release's incident, as the rollback controller records it
        dep = store.get(Deployment, "hello-2")
        dep.status.phase, dep.status.live_time = "Live", clock.now_iso()
        dep.status.failing_since = clock.now_iso()
        dep.status.failing_restarts = 1 if case == "crash-once" else 2
        store.update_status(dep)
        make_instance(two, 0, phase="Running", restarts=3, reason="CrashLoopBackOff", message="exit 1")
    NotifyController(store, clock, config).reconcile("hello")
    made = notes(store)
    assert len(made) == len(expected)
    for n, prefix in zip(made, expected, strict=True):
        assert n.metadata.name.startswith(prefix)
        assert n.spec.targets == [store.list(Notifier)[0][0].metadata.name]
    if case == "auto-rollback":
        assert made[0].spec.reason == "AutomaticRollback" and "hello-2 failed 2 times" in made[0].spec.message
    if case == "manual-rollback":
        assert made[0].spec.reason == "ManualRollback"
    if case == "crash-loop":
        assert "hello-2-0 restarted 3 time(s)" in made[0].spec.message
    before = [(n.metadata.name, n.metadata.resource_version) for n in made]
    NotifyController(store, clock, config).reconcile("hello")
    assert [(n.metadata.name, n.metadata.resource_version) for n in notes(store)] == before


def test_a_new_crash_loop_incident_is_a_new_message(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    add_notifier: Any,
) -> None:
    """Incidents are told apart by when they began: a release that recovered and loops again
    is told again; the same incident seen later is not."""
    app = make_app("hello")
    make_deployment(
        app, 1, phase="Live", live_time=clock.now_iso(), failing_since=clock.now_iso(), failing_restarts=2
    )
    add_notifier("hello", "https://hooks.example/x/y/zzzzzzzzzzzz")
    ctl = NotifyController(store, clock, config)
    ctl.reconcile("hello")
    clock.advance(60)
    dep = store.get(Deployment, "hello-1")
    dep.status.failing_restarts = 5
    store.update_status(dep)
    ctl.reconcile("hello")
    assert len(notes(store)) == 1
    clock.advance(600)
    dep = store.get(Deployment, "hello-1")
    dep.status.failing_since, dep.status.failing_restarts = clock.now_iso(), 2
    store.update_status(dep)
    ctl.reconcile("hello")
    assert len(notes(store)) == 2


def test_the_url_never_reaches_logs_events_or_status(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    receiver: Receiver,
    add_notifier: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unreachable and refusing receivers: the reasons name the notifier and its masked hint,
    never the URL's secret path; a 4xx gives up with a Warning Event on the App."""
    caplog.set_level(logging.DEBUG)
    app = make_app("hello")
    make_deployment(app, 1, phase="Building")
    dead = add_notifier("hello", f"http://127.0.0.1:1{SECRET_PATH}")  # nothing listens on port 1
    gone = add_notifier("hello", receiver.url(SECRET_PATH + "2"))
    receiver.script = [(404, {})]
    fail(store, clock, "hello-1")
    NotifyController(store, clock, config).reconcile("hello")
    with pytest.raises(DeliveryFailed) as err:
        NotifyDeliveryController(store, clock, config).reconcile("hello-1.deployfailed")
    note = notes(store)[0]
    assert note.status.deliveries[dead.metadata.name].state == "Pending"
    assert note.status.deliveries[gone.metadata.name].state == "Failed"
    assert "404" in note.status.deliveries[gone.metadata.name].message
    warned = events_for(store, "hello", "NotificationFailed")
    assert len(warned) == 1
    texts = [
        str(err.value),
        note.model_dump_json(),
        store.get(Notifier, dead.metadata.name).model_dump_json(),
        caplog.text,
        *(e.spec.message for e in warned),
    ]
    assert not [t for t in texts if "s3cr3tT0k3n" in t]
    assert "127.0.0.1:1/…" in str(err.value)  # the masked hint says which one


def test_a_removed_notifier_is_dropped_and_the_rest_still_delivered(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    receiver: Receiver,
    add_notifier: Any,
) -> None:
    """Removing a notifier between the failure and the send drops only that target."""
    app = make_app("hello")
    make_deployment(app, 1, phase="Building")
    keep = add_notifier("", receiver.url("/install/hook/0000000000"))
    drop = add_notifier("hello", receiver.url("/app/hook/1111111111"))
    fail(store, clock, "hello-1")
    NotifyController(store, clock, config).reconcile("hello")
    store.delete(Notifier, drop.metadata.name)
    NotifyDeliveryController(store, clock, config).reconcile("hello-1.deployfailed")
    note = notes(store)[0]
    assert {k: v.state for k, v in note.status.deliveries.items()} == {
        keep.metadata.name: "Sent",
        drop.metadata.name: "Dropped",
    }
    assert note.status.phase == "Delivered"
    assert [r.path for r in receiver.wait_for(1, timeout=5)] == ["/install/hook/0000000000"]


def test_no_notifier_makes_nothing(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
) -> None:
    """Without a notifier a failure leaves no record behind."""
    make_deployment(make_app("hello"), 1, phase="Building")
    fail(store, clock, "hello-1")
    NotifyController(store, clock, config).reconcile("hello")
    assert notes(store) == []


def test_a_deleted_app_tells_nothing_and_takes_its_notifiers(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    add_notifier: Any,
) -> None:
    """Deleting the App leaves nothing new to tell (its releases are being torn down) and deletes
    its notifiers, not the install's; an App made again under that name does not inherit them."""
    app = make_app("hello")
    one = make_deployment(app, 1, phase="Live", live_time=clock.now_iso())
    mine = add_notifier("hello", "https://hooks.example/a/b/cccccccccccc")
    everyone = add_notifier("", "https://hooks.example/a/b/dddddddddddd")
    store.create(rollback_release(app, 2, one, owned=True))
    store.delete(App, "hello")
    NotifyController(store, clock, config).reconcile("hello")
    assert notes(store) == []
    assert [n.metadata.name for n in store.list(Notifier)[0]] == [everyone.metadata.name]
    # a notifier left behind (by a crash) for an App of that name made again since
    store.create(
        mine.model_copy(update={"metadata": mine.metadata.model_copy(update={"resource_version": 0})})
    )
    make_app("hello")
    NotifyController(store, clock, config).reconcile("hello")
    assert [n.metadata.name for n in store.list(Notifier)[0]] == [everyone.metadata.name]


def requests(
    store: Store, clock: FakeClock, app: str, ok: int, errors: int, batch: str, ago: float = 0
) -> None:
    """What a proxy sends: one 10 s sample of ``app``'s requests, ``ago`` seconds back."""
    from forge.appmetrics import RequestSample, bucket_of

    sample = RequestSample(app, f"{app}-1", bucket_of(clock.now() - ago), by_class={"2xx": ok, "5xx": errors})
    assert store.add_requests("proxy/p1", batch, [sample])


@pytest.mark.parametrize(
    "ok, errors, ago, alerts",
    [
        (18, 2, 0, True),  # 10 % of 20
        (19, 1, 0, False),  # 5 % is not more than 5 %
        (5, 5, 0, False),  # half, but fewer than 20 requests
        (0, 40, 400, False),  # outside the 5-minute window
        (900, 100, 60, True),  # 10 % of 1,000, a minute ago
    ],
    ids=["over", "at-threshold", "too-few", "too-old", "recent"],
)
def test_error_rate_alert_reads_the_request_series(
    ok: int,
    errors: int,
    ago: float,
    alerts: bool,
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    add_notifier: Any,
) -> None:
    """More than 5 % 5xx of at least 20 requests in the last 5 minutes (the proxies' counts in the
    store) makes one ErrorRate notification naming the live release; otherwise none."""
    app = make_app("hello")
    make_deployment(app, 1, phase="Live", live_time=clock.now_iso())
    add_notifier("hello", "https://hooks.example/e/r/rrrrrrrrrrrr")
    requests(store, clock, "hello", ok, errors, "b1", ago)
    res = NotifyController(store, clock, config).reconcile("hello")
    assert res is not None and res.requeue_after == ERROR_RATE_CHECK_SECONDS  # no watch wakes it
    made = notes(store)
    assert len(made) == (1 if alerts else 0)
    if alerts:
        assert made[0].spec.event == "ErrorRate" and made[0].spec.release == "hello-1"
        assert f"{errors} of {ok + errors} requests" in made[0].spec.message


def test_a_sustained_error_rate_is_one_message_an_hour(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    add_notifier: Any,
) -> None:
    """Errors every minute: one message, then silence (across a restart) until an hour has passed."""
    app = make_app("hello")
    make_deployment(app, 1, phase="Live", live_time=clock.now_iso())
    add_notifier("hello", "https://hooks.example/e/r/rrrrrrrrrrrr")
    for minute in range(61):
        requests(store, clock, "hello", 10, 20, f"b{minute}")
        NotifyController(store, clock, config).reconcile("hello")  # a fresh one: a restart each time
        assert len(notes(store)) == (1 if minute < 60 else 2), minute
        clock.advance(60)


def test_error_rate_is_checked_only_when_someone_listens(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    add_notifier: Any,
) -> None:
    """A notifier that does not hear ErrorRate neither gets one nor keeps the App requeued."""
    app = make_app("hello")
    make_deployment(app, 1, phase="Live", live_time=clock.now_iso())
    add_notifier("hello", "https://hooks.example/e/r/rrrrrrrrrrrr", events=["DeployFailed"])
    requests(store, clock, "hello", 0, 50, "b1")
    res = NotifyController(store, clock, config).reconcile("hello")
    assert (res is None or res.requeue_after is None) and notes(store) == []


@pytest.mark.parametrize(
    "env, want",
    [
        (
            {"FORGE_ALERT_ERROR_RATE": "10%", "FORGE_ALERT_MIN_REQUESTS": "50", "FORGE_ALERT_WINDOW": "10m"},
            (0.1, 50, 600.0),
        ),
        ({"FORGE_ALERT_ERROR_RATE": "0.02"}, (0.02, 20, 300.0)),
        ({}, (0.05, 20, 300.0)),
        ({"FORGE_ALERT_ERROR_RATE": "150%"}, "FORGE_ALERT_ERROR_RATE"),
        ({"FORGE_ALERT_MIN_REQUESTS": "0"}, "FORGE_ALERT_MIN_REQUESTS"),
        ({"FORGE_ALERT_WINDOW": "5d"}, "FORGE_ALERT_WINDOW"),
    ],
    ids=["percent", "share", "defaults", "bad-rate", "bad-min", "bad-window"],
)
def test_alert_settings_from_the_environment(env: dict[str, str], want: Any) -> None:
    """The thresholds are install-wide settings; a bad one is refused naming the variable."""
    from forge.errors import Invalid

    if isinstance(want, str):
        with pytest.raises(Invalid, match=want):
            Config.from_env(env=env)
        return
    cfg = Config.from_env(env=env)
    assert (cfg.alert_error_rate, cfg.alert_min_requests, cfg.alert_window_seconds) == want


def test_a_crash_between_the_post_and_its_record_resends_with_the_same_key(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    receiver: Receiver,
    add_notifier: Any,
) -> None:
    """At least once: the receiver took the message but the controller died before recording it,
    so the next one posts again — with the same Idempotency-Key, for the receiver to drop — and
    records it once."""
    app = make_app("hello")
    make_deployment(app, 1, phase="Building")
    add_notifier("hello", receiver.url())
    fail(store, clock, "hello-1")
    NotifyController(store, clock, config).reconcile("hello")
    real = store.update_status

    def crash(obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, Notification):
            raise SystemExit("killed between the post and its record")
        return real(obj, *args, **kwargs)

    store.update_status = crash  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        NotifyDeliveryController(store, clock, config).reconcile("hello-1.deployfailed")
    store.update_status = real  # type: ignore[method-assign]
    assert notes(store)[0].status.phase == ""  # nothing recorded
    NotifyDeliveryController(store, clock, config).reconcile("hello-1.deployfailed")
    got = receiver.wait_for(2, timeout=5)
    assert len(got) == 2 and got[0].headers["idempotency-key"] == got[1].headers["idempotency-key"]
    assert len({r.body["forge"]["id"] for r in got}) == 1
    note = notes(store)[0]
    assert note.status.phase == "Delivered"
    assert [d.attempts for d in note.status.deliveries.values()] == [1]


def test_under_the_runtime_a_restart_while_it_waits_still_delivers_once(
    tmp_path: Any, config: Config, receiver: Receiver
) -> None:
    """The real runtime (watch → queue → reconcile, back-off, requeue_after) on a real clock: a
    failure, the receiver's 500 then 429 Retry-After 1, the controllers restarted in between,
    then 200 — three posts, one accepted, the record Delivered."""
    from prometheus_client import CollectorRegistry

    from forge.clock import SystemClock
    from forge.controllers.runtime import ControllerRuntime
    from forge.models import AppSpec, DeploymentSpec
    from forge.store.sqlite import SqliteStore

    clock = SystemClock()
    db = SqliteStore(str(tmp_path / "runtime.db"))
    runtime: ControllerRuntime | None = None

    def start() -> ControllerRuntime:
        ctls = [NotifyController(db, clock, config), NotifyDeliveryController(db, clock, config)]
        rt = ControllerRuntime(db, clock, list(ctls), CollectorRegistry())
        rt.start()
        return rt

    def phase() -> str:
        return str(db.get(Notification, "hello-1.deployfailed").status.phase)

    try:
        app = db.create(App(metadata=ObjectMeta(name="hello"), spec=AppSpec(repo="acme/hello")))
        db.create(
            Deployment(
                metadata=ObjectMeta(name="hello-1", labels={"forge.dev/app": "hello"}),
                spec=DeploymentSpec(app="hello", commit="a" * 40),
            )
        )
        owner = OwnerRef(kind="App", name="hello", uid=app.metadata.uid)
        db.create(build_notifier(Keyring.load(config), "hello", receiver.url(), "generic", None, owner))
        receiver.script = [(500, {}), (429, {"Retry-After": "1"}), (200, {})]
        runtime = start()
        fail(db, clock, "hello-1")  # type: ignore[arg-type]
        assert len(receiver.wait_for(2, timeout=30)) >= 2
        runtime.close()
        runtime = start()  # restarted while it waits out the receiver's Retry-After
        assert len(receiver.wait_for(3, timeout=30)) == 3
        deadline = clock.monotonic() + 30
        while phase() != "Delivered" and clock.monotonic() < deadline:
            runtime.wait_idle(timeout=1)
        assert phase() == "Delivered"
        runtime.wait_idle(timeout=2)
        assert [r.answered for r in receiver.requests] == [500, 429, 200]
    finally:
        if runtime is not None:
            runtime.close()
        db.close()


def drain(rt: Any, store: Store, ctl: Any, rounds: int = 50) -> None:
    """Deliver the store's changes to the stepped runtime and run every ready key, until quiet."""
    for _ in range(rounds):
        for kind in ctl.watches:
            events = store.watch(kind, since=rt._delivered[kind], timeout=0)
            if events:
                rt.deliver(kind, events)
        if rt.process_one(ctl) is None:
            return
    raise AssertionError(f"{ctl.name} never went quiet in {rounds} rounds: a hot loop")


def test_a_failing_receiver_is_retried_with_back_off_not_on_every_status_write(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Any,
    make_deployment: Any,
    receiver: Receiver,
    add_notifier: Any,
) -> None:
    """The stepped runtime on a fake clock: each failed post writes the status (attempts), and that
    write must not wake the key again — the next post waits for the work queue's back-off."""
    import random

    from forge.controllers.runtime import ControllerRuntime

    app = make_app("hello")
    make_deployment(app, 1, phase="Building")
    add_notifier("hello", receiver.url())
    fail(store, clock, "hello-1")
    NotifyController(store, clock, config).reconcile("hello")
    receiver.script = [(500, {})] * 20
    ctl = NotifyDeliveryController(store, clock, config)
    rt = ControllerRuntime(store, clock, [ctl], threaded=False, rng=random.Random(1))
    rt.start()
    try:
        drain(rt, store, ctl)
        assert len(receiver.requests) == 1
        for n in range(2, 6):
            clock.advance(60)  # past any back-off up to the cap
            drain(rt, store, ctl)
            assert len(receiver.requests) == n
        assert notes(store)[0].status.deliveries[ctl.store.list(Notifier)[0][0].metadata.name].attempts == 5
    finally:
        rt.close()
