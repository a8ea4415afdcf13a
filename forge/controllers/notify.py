"""Notifications: failures become Notification records (``notify``), records become webhook
posts (``notify-delivery``). Decisions are ``forge.notify``'s pure functions.

``NotifyController`` (key = app name) reads the statuses the rollout and rollback controllers
own — a Deployment ``Failed``, a rollback Deployment, the live release's failure incident — and
the proxies' request counts of the App (every ``ERROR_RATE_CHECK_SECONDS`` while a notifier hears
``ErrorRate``: the series are not records, so no watch wakes it), and
ensures one Notification per failure, named by the failure (``hello-4.deployfailed``), with the
Notifier names that hear of it. It writes no status and never edits a Notification: creating a
name that exists is the whole of its de-duplication, so a restart or a late resync makes
nothing twice.

``NotifyDeliveryController`` (key = Notification name) posts the message to each target and
records, in ``Notification.status`` (its own, nobody else writes it), each target's outcome
right after the receiver answered: what was accepted (2xx) is never posted again. A 429 or 503
with ``Retry-After`` is honoured across restarts (``notBeforeTime``); 5xx, 408, 429 and network
failures raise, so the work queue backs the key off with jitter; any other 4xx, a removed
Notifier, or a day of failures ends that target. Nothing waits for it: a receiver that is down
never holds a deploy. Every post carries ``Idempotency-Key: NAME/UID/TARGET`` so a receiver can
drop the one duplicate an at-least-once send makes when the controller dies between the post and
its record. The URL (sealed in the Notifier) is opened only to post; logs, Events and status
messages name the Notifier and its masked hint.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol
from urllib.parse import urlsplit

from forge import __version__
from forge.clock import Clock, iso, parse_iso
from forge.config import Config
from forge.controllers import deploystate as ds
from forge.controllers.base import DONE, AppKeyedController, Controller, Result
from forge.controllers.cache import read_only
from forge.errors import AlreadyExists, Conflict, ForgeError, NotFound
from forge.events import EventRecorder
from forge.models import (
    LABEL_APP,
    App,
    Delivery,
    Deployment,
    Instance,
    Notification,
    NotificationSpec,
    Notifier,
    ObjectMeta,
)
from forge.notify import (
    CRASH_LOOP_FAILURES,
    ERROR_RATE_CHECK_SECONDS,
    GIVE_UP_SECONDS,
    RETAIN_SECONDS,
    ErrorRateSettings,
    desired_notifications,
    error_rate_alert,
    is_repeat_alert,
    message_body,
    retry_after_seconds,
    targets_for,
)
from forge.series import FINE_STEP
from forge.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS: Final[float] = 10.0
REASON_NOTIFY_FAILED: Final[str] = "NotificationFailed"
RETRYABLE: Final[frozenset[int]] = frozenset({408, 425, 429})
MAX_RETRY_AFTER_SECONDS: Final[float] = 3600.0
STATUS_WRITE_TRIES: Final[int] = 5


class DeliveryFailed(ForgeError):
    """A post that may work later (the work queue retries with back-off). Its message names the
    Notifier and the masked URL, never the URL."""

    status: ClassVar[int] = 502
    reason: ClassVar[str] = "DeliveryFailed"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]


class Sender(Protocol):
    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer: ...


class HttpSender:
    """One POST with http.client: no redirects followed, no proxy, no request logging (httpx logs
    every URL at INFO, and this URL is a credential). OSError for network failures."""

    def __init__(self, timeout: float = SEND_TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self._tls = ssl.create_default_context()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("POST", path, body=body, headers=dict(headers))
            resp = conn.getresponse()
            resp.read(64 * 1024)  # the answer is not used; bounded so a receiver cannot flood us
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()})
        except http.client.HTTPException as exc:
            raise OSError(f"bad HTTP answer ({type(exc).__name__})") from None
        finally:
            conn.close()


# --------------------------------------------------------------------------- notify (decide)


def is_interesting(dep: Deployment) -> bool:
    """Deployment changes that may make a notification (the rest wake nothing)."""
    st = dep.status
    return (
        st.phase == "Failed"
        or dep.spec.trigger.type == "rollback"
        or (st.failing_since is not None and st.failing_restarts >= CRASH_LOOP_FAILURES)
    )


class NotifyController(AppKeyedController):
    name: ClassVar[str] = "notify"
    watches: ClassVar[tuple[str, ...]] = ("App", "Deployment", "Notifier")
    resync_seconds: ClassVar[float] = 300.0

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        obj = event.object
        if event.type == "DELETED":  # a deleted App's notifiers go with it
            return (obj.metadata.name,) if isinstance(obj, App) else ()
        if isinstance(obj, App):  # a new App starts its error-rate checks at once
            return (obj.metadata.name,) if event.type == "ADDED" else ()
        if isinstance(obj, Notifier):  # a new notifier hears of failures still inside the horizon
            return (obj.spec.app,) if obj.spec.app else self.all_keys()
        if isinstance(obj, Deployment) and is_interesting(obj):
            return (obj.spec.app,)
        return ()

    def reconcile(self, key: str) -> Result | None:
        notifiers = read_only(self.store, Notifier)
        if not notifiers:
            return DONE
        try:
            app: App | None = self.store.get(App, key)
        except NotFound:
            app = None
        notifiers = self._collect(key, app, notifiers)
        if app is None or app.metadata.deletion_timestamp is not None:
            return DONE
        deps = [d for d in read_only(self.store, Deployment, {LABEL_APP: key}) if d.spec.app == key]
        live = ds.live_deployment(app, deps)
        insts: list[Instance] = []
        if live is not None and live.status.failing_since is not None:
            insts = [i for i in self.store.list(Instance, {LABEL_APP: key})[0] if i.spec.app == key]
        now = self.clock.now()
        want = desired_notifications(key, deps, insts, live, now)
        for name, spec in sorted(want.items()):
            self._ensure(name, spec, notifiers)
        if not targets_for(notifiers, key, "ErrorRate"):
            return DONE
        self._check_error_rate(key, live, notifiers, now)
        return Result(requeue_after=ERROR_RATE_CHECK_SECONDS)

    def _collect(self, key: str, app: App | None, notifiers: list[Notifier]) -> list[Notifier]:
        """Delete the notifiers of App ``key`` that belong to no App of that name any more (it was
        deleted, or deleted and made again: the ownerRef's uid tells), as Kubernetes' garbage
        collector deletes dependents whose owner is gone."""
        live_uid = app.metadata.uid if app is not None and app.metadata.deletion_timestamp is None else None
        kept = []
        for n in notifiers:
            ref = n.metadata.owner_ref
            if n.spec.app != key or ref is None or ref.kind != "App" or ref.uid == live_uid:
                kept.append(n)
                continue
            try:
                self.store.delete(Notifier, n.metadata.name)
                log.info("notify: deleted notifier %s of deleted app %s", n.metadata.name, key)
            except NotFound:
                pass
        return kept

    def _check_error_rate(
        self, key: str, live: Deployment | None, notifiers: list[Notifier], now: float
    ) -> None:
        """The proxies' request counts of the last window (the store's 10 s series) against the
        threshold; at most one message an hour while it stays high."""
        settings = ErrorRateSettings(
            rate=self.config.alert_error_rate,
            min_requests=self.config.alert_min_requests,
            window_seconds=self.config.alert_window_seconds,
        )
        points = self.store.read_requests(key, FINE_STEP, int(now - settings.window_seconds), int(now))
        total = sum(p.total for p in points)
        errors = sum(p.by_class.get("5xx", 0) for p in points)
        release = live.metadata.name if live is not None else ""
        found = error_rate_alert(key, total, errors, now, settings, release)
        if found is None:
            return
        earlier: list[Notification] = self.store.list(Notification, {LABEL_APP: key})[0]
        if is_repeat_alert(earlier, key, now):
            return
        self._ensure(found[0], found[1], notifiers)

    def _ensure(self, name: str, spec: NotificationSpec, notifiers: list[Notifier]) -> None:
        try:
            self.store.get(Notification, name)
            return
        except NotFound:
            pass
        targets = targets_for(notifiers, spec.app, spec.event)
        if not targets:
            return
        note = Notification(
            metadata=ObjectMeta(name=name, labels={LABEL_APP: spec.app}),
            spec=spec.model_copy(update={"targets": targets}),
        )
        try:
            self.store.create(note)
            log.info("notify: %s (%s) for %s", name, spec.event, ", ".join(targets))
        except AlreadyExists:
            pass


# --------------------------------------------------------------------------- delivery


def is_finished(note: Notification) -> bool:
    return note.status.finished_time is not None


def compute_phase(note: Notification) -> str:
    states = [note.status.deliveries.get(t, Delivery()).state for t in note.spec.targets]
    if any(s == "Pending" for s in states):
        return "Pending"
    return "Failed" if any(s == "Failed" for s in states) else "Delivered"


class NotifyDeliveryController(Controller):
    name: ClassVar[str] = "notify-delivery"
    watches: ClassVar[tuple[str, ...]] = ("Notification",)
    resync_seconds: ClassVar[float] = 300.0

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        recorder: EventRecorder | None = None,
        sender: Sender | None = None,
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self.sender: Sender = sender or HttpSender()
        self._keyring: object | None = None

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        """A new Notification only: its spec never changes after creation, so every later change
        is this controller's own status write — waking on those would post again at once and
        defeat the work queue's back-off (its requeues and the resync bring the key back)."""
        obj = event.object
        if event.type != "ADDED" or not isinstance(obj, Notification) or is_finished(obj):
            return ()
        return (obj.metadata.name,)

    def all_keys(self) -> Iterable[str]:
        return sorted(n.metadata.name for n in read_only(self.store, Notification))

    def _open_url(self, notifier: Notifier) -> str:
        from forge.secrets import Keyring, aad_for

        if self._keyring is None:
            self._keyring = Keyring.load(self.config)
        assert isinstance(self._keyring, Keyring)
        return self._keyring.decrypt(notifier.spec.url, aad_for("Notifier", notifier.metadata.name, "url"))

    def reconcile(self, key: str) -> Result | None:
        try:
            note = self.store.get(Notification, key)
        except NotFound:
            return DONE
        now = self.clock.now()
        if is_finished(note):
            age = now - parse_iso(note.status.finished_time or "")
            if age >= RETAIN_SECONDS:
                try:
                    self.store.delete(Notification, key)
                except NotFound:
                    pass
                return DONE
            return Result(requeue_after=RETAIN_SECONDS - age)
        waits: list[float] = []
        failures: list[str] = []
        for target in note.spec.targets:
            delivery = note.status.deliveries.get(target, Delivery())
            if delivery.state != "Pending":
                continue
            if delivery.not_before_time is not None and parse_iso(delivery.not_before_time) > now:
                waits.append(parse_iso(delivery.not_before_time) - now)
                continue
            outcome, wait, why = self._deliver(note, target, delivery, now)
            note = self._record(note, target, outcome)
            if wait is not None:
                waits.append(wait)
            if why:
                failures.append(why)
        note = self._finish(note)
        if failures:
            raise DeliveryFailed("; ".join(failures))
        if waits:
            return Result(requeue_after=max(0.5, min(waits)))
        if is_finished(note):
            return Result(requeue_after=RETAIN_SECONDS)
        return DONE

    def _deliver(
        self, note: Notification, target: str, delivery: Delivery, now: float
    ) -> tuple[Delivery, float | None, str]:
        """(the target's new Delivery, seconds to wait before the next try, a retryable failure)."""
        out = delivery.model_copy(deep=True)
        out.not_before_time = None
        try:
            notifier = self.store.get(Notifier, target)
        except NotFound:
            out.state, out.message = "Dropped", "the notifier was removed before the message went out"
            return out, None, ""
        hint = f"{target} ({notifier.spec.url_hint})"
        created = parse_iso(note.metadata.created_at) if note.metadata.created_at else now
        give_up = now - created >= GIVE_UP_SECONDS
        try:
            url = self._open_url(notifier)
        except ForgeError as exc:  # DecryptionFailed names the record and field, not the value
            return self._give_up(note, out, hint, f"cannot open the notifier's URL: {exc.message}"), None, ""
        body = message_body(
            note.metadata.name, note.metadata.uid, note.spec, notifier.spec.format, self.config.dashboard_url
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"forge/{__version__}",
            "Idempotency-Key": f"{note.metadata.name}/{note.metadata.uid}/{target}",
        }
        out.attempts += 1
        try:
            answer = self.sender.post(url, json.dumps(body).encode(), headers)
        except OSError as exc:
            why = f"{hint}: {type(exc).__name__}: {_scrub(str(exc), url)}"
            return self._retry_or_give_up(note, out, hint, why, give_up)
        if 200 <= answer.status < 300:
            out.state, out.sent_time, out.message = "Sent", iso(now), ""
            log.info("notify-delivery: %s sent to %s", note.metadata.name, hint)
            return out, None, ""
        why = f"{hint} answered HTTP {answer.status}"
        retry_after = retry_after_seconds(answer.headers.get("retry-after"), now)
        if retry_after is not None:
            retry_after = min(retry_after, MAX_RETRY_AFTER_SECONDS)  # a year's wait is a typo
        if answer.status in (429, 503) and retry_after is not None and not give_up:
            out.not_before_time = iso(now + retry_after)
            out.message = f"{why}; retrying after {retry_after:g}s as it asked"
            return out, retry_after, ""
        if answer.status >= 500 or answer.status in RETRYABLE:
            return self._retry_or_give_up(note, out, hint, why, give_up)
        return self._give_up(note, out, hint, why), None, ""

    def _retry_or_give_up(
        self, note: Notification, out: Delivery, hint: str, why: str, give_up: bool
    ) -> tuple[Delivery, float | None, str]:
        if give_up:
            return (
                self._give_up(note, out, hint, f"{why} (still failing after {GIVE_UP_SECONDS:g}s)"),
                None,
                "",
            )
        out.message = why
        return out, None, why

    def _give_up(self, note: Notification, out: Delivery, hint: str, why: str) -> Delivery:
        out.state, out.message = "Failed", why
        try:
            app = self.store.get(App, note.spec.app)
        except NotFound:
            return out
        self.recorder.record(
            app, "Warning", REASON_NOTIFY_FAILED, f"notification {note.metadata.name} not sent: {why}"
        )
        return out

    def _record(self, note: Notification, target: str, delivery: Delivery) -> Notification:
        """Write one target's outcome at once (re-reading on a conflict: the slot is ours alone)."""
        for _ in range(STATUS_WRITE_TRIES):
            stored = note.status.deliveries.get(target)
            if stored == delivery or (stored is not None and stored.state != "Pending"):
                return note  # a settled target stays settled (a stale read never undoes a Sent)
            new = note.model_copy(deep=True)
            new.status.deliveries[target] = delivery
            new.status.phase = compute_phase(new)
            try:
                return self.store.update_status(new)
            except Conflict:
                note = self.store.get(Notification, note.metadata.name)
        raise Conflict(f"{note.metadata.name}: could not record the delivery to {target}")

    def _finish(self, note: Notification) -> Notification:
        phase = compute_phase(note)
        if phase == "Pending" or is_finished(note):
            return note
        new = note.model_copy(deep=True)
        new.status.phase, new.status.finished_time = phase, self.clock.now_iso()
        new.status.observed_generation = note.metadata.generation
        return self.store.update_status(new)


def _scrub(text: str, url: str) -> str:
    """An exception's text without the URL or its path (a resolver error may quote the host)."""
    parts = urlsplit(url)
    for secret in (url, parts.path, parts.query, parts.netloc):
        if secret and len(secret) > 1:
            text = text.replace(secret, "…")
    return text[:300]
