"""Notifications (issue 25): what is worth a message, and the message itself. Pure functions.

Four things tell a person something went wrong, each read from the records of the controller
that decided it (nothing here writes a status field):

- **DeployFailed** — a Deployment rollout ended ``Failed`` (build failure, release command
  failure, progress deadline, a release that crashed before it went live …), except a live
  release undone by a rollback, which is the next event.
- **RolledBack** — a Deployment whose trigger is ``rollback`` exists: made by the rollback
  controller (automatic; its App owns it) or asked for (``forge rollback``).
- **CrashLoop** — the live release's incident (the rollback controller's ``failingSince``)
  counts ``CRASH_LOOP_FAILURES`` failures: one message per incident.
- **ErrorRate** — the share of 5xx responses of an App's requests (the proxies' counts in the
  store's request series) over the last window passes a threshold (``error_rate_alert``); while
  it stays high, one message an hour (``is_repeat_alert``).

Each is a Notification whose name is its identity (``hello-4.deployfailed``,
``hello-4.crashloop.1a2b3c4d``), so however often a controller looks, or restarts, one
failure makes one record and one message. Only events newer than ``HORIZON_SECONDS`` are
considered: a notifier added today says nothing about last week, and a delivered record
deleted after ``RETAIN_SECONDS`` (longer than the horizon) is never made again.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

from forge.clock import iso, parse_iso
from forge.models import (
    Deployment,
    Instance,
    Notification,
    NotificationSpec,
    Notifier,
    NotifyFormat,
    deployment_number,
)

HORIZON_SECONDS: Final[float] = 900.0  # events older than this when first seen make no message
RETAIN_SECONDS: Final[float] = 86400.0  # a finished Notification is deleted this long after
GIVE_UP_SECONDS: Final[float] = 86400.0  # a target still failing after this is marked Failed
CRASH_LOOP_FAILURES: Final[int] = 2  # failures in one incident of the live release
ERROR_RATE_REPEAT_SECONDS: Final[float] = 3600.0  # a sustained error rate: one message an hour
ERROR_RATE_CHECK_SECONDS: Final[float] = 60.0  # how often an App whose notifiers hear it is looked at
REASON_ROLLED_BACK: Final[str] = "RolledBack"
REASON_AUTOMATIC: Final[str] = "AutomaticRollback"
REASON_MANUAL: Final[str] = "ManualRollback"
INSTALL_SCOPE: Final[str] = "install"


@dataclass(frozen=True)
class ErrorRateSettings:
    """``FORGE_ALERT_ERROR_RATE`` (share, 0.05), ``FORGE_ALERT_MIN_REQUESTS`` (20) and
    ``FORGE_ALERT_WINDOW`` (seconds, 300): alert when more than ``rate`` of at least
    ``min_requests`` requests in the last ``window_seconds`` were 5xx."""

    rate: float = 0.05
    min_requests: int = 20
    window_seconds: float = 300.0


# --------------------------------------------------------------------------- URLs (secrets)


def check_url(url: str) -> str:
    """An http(s) URL with a host; ValueError naming what is wrong (never the URL itself)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if any(ord(c) < 0x21 for c in url.strip()):
        raise ValueError("must not contain spaces or control characters")
    return url.strip()


def mask_url(url: str) -> str:
    """``https://hooks.slack.com/…/XbC9``: enough to tell two notifiers apart, never the credential
    (a Slack URL's path is its secret; so may be a query string or user info)."""
    parts = urlsplit(url)
    tail = (parts.path + ("?" + parts.query if parts.query else "")).rstrip("/")
    last = tail[-4:] if len(tail) >= 12 else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…{last}"


def default_format(url: str) -> NotifyFormat:
    return "slack" if (urlsplit(url).hostname or "").endswith("slack.com") else "generic"


def url_digest(key: bytes, url: str) -> str:
    """A keyed digest of the URL: names the Notifier (adding the same URL twice finds it) and
    says nothing of the URL to anyone without the install's key."""
    return hmac.new(key, b"forge-notifier\x00" + url.encode(), hashlib.sha256).hexdigest()[:12]


def notifier_name(app: str, digest: str) -> str:
    """``app.hello.DIGEST`` for one App, ``install.DIGEST`` for the whole install (a dot keeps
    an App named ``install`` apart from the install)."""
    return f"app.{app}.{digest}" if app else f"{INSTALL_SCOPE}.{digest}"


def targets_for(notifiers: Iterable[Notifier], app: str, event: str) -> list[str]:
    """Names of the notifiers that hear of ``event`` on ``app``: the App's own and install-wide."""
    return sorted(
        n.metadata.name
        for n in notifiers
        if n.metadata.deletion_timestamp is None
        and n.spec.app in ("", app)
        and (not n.spec.events or event in n.spec.events)
    )


# --------------------------------------------------------------------------- decisions


def short_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _recent(when: str | None, now: float) -> bool:
    return bool(when) and now - parse_iso(when or "") <= HORIZON_SECONDS


def _failed(dep: Deployment, now: float) -> tuple[str, NotificationSpec] | None:
    st = dep.status
    if st.phase != "Failed" or st.reason == REASON_ROLLED_BACK:
        return None
    when = st.finished_time or dep.metadata.updated_at
    if not _recent(when, now):
        return None
    spec = NotificationSpec(
        event="DeployFailed",
        app=dep.spec.app,
        release=dep.metadata.name,
        commit=dep.spec.commit,
        reason=st.reason or "Failed",
        message=(st.message or f"release {dep.metadata.name} failed")[:4096],
        time=when or "",
    )
    return f"{dep.metadata.name}.deployfailed", spec


def _rollback(
    dep: Deployment, deployments: list[Deployment], now: float
) -> tuple[str, NotificationSpec] | None:
    if dep.spec.trigger.type != "rollback":
        return None
    when = dep.metadata.created_at
    if not _recent(when, now):
        return None
    automatic = dep.metadata.owner_ref is not None
    target = dep.spec.rollback_of or dep.spec.commit[:7]
    why = ""
    if automatic:
        n = deployment_number(dep.metadata.name)
        undone = [
            d
            for d in deployments
            if deployment_number(d.metadata.name) < n and d.status.is_true("RolledBack")
        ]
        if undone:
            bad = max(undone, key=lambda d: deployment_number(d.metadata.name))
            cond = bad.status.condition("RolledBack")
            why = f"{bad.metadata.name} {cond.message if cond else 'was failing'}"
    message = f"{dep.spec.app} is rolling back to {target} with release {dep.metadata.name}" + (
        f": {why}" if why else " (asked for)" if not automatic else ""
    )
    spec = NotificationSpec(
        event="RolledBack",
        app=dep.spec.app,
        release=dep.metadata.name,
        commit=dep.spec.commit,
        reason=REASON_AUTOMATIC if automatic else REASON_MANUAL,
        message=message[:4096],
        time=when or "",
    )
    return f"{dep.metadata.name}.rolledback", spec


def _crash_loop(
    live: Deployment | None, instances: list[Instance], now: float
) -> tuple[str, NotificationSpec] | None:
    if live is None or live.status.phase != "Live":
        return None
    st = live.status
    if st.failing_since is None or st.failing_restarts < CRASH_LOOP_FAILURES:
        return None
    if not _recent(st.last_restart_time or st.failing_since, now):
        return None
    mine = sorted(
        (i for i in instances if i.spec.deployment == live.metadata.name and i.status.restarts > 0),
        key=lambda i: (-i.status.restarts, i.metadata.name),
    )
    detail = "; ".join(
        f"{i.metadata.name} restarted {i.status.restarts} time(s)"
        + (f" ({i.status.reason}: {i.status.message})" if i.status.reason else "")
        for i in mine[:3]
    )
    message = f"{live.metadata.name} failed {st.failing_restarts} times since {st.failing_since}" + (
        f": {detail}" if detail else ""
    )
    spec = NotificationSpec(
        event="CrashLoop",
        app=live.spec.app,
        release=live.metadata.name,
        commit=live.spec.commit,
        reason="CrashLoopBackOff",
        message=message[:4096],
        time=st.failing_since,
    )
    return f"{live.metadata.name}.crashloop.{short_digest(st.failing_since)}", spec


def desired_notifications(
    app: str,
    deployments: list[Deployment],
    instances: list[Instance],
    live: Deployment | None,
    now: float,
) -> dict[str, NotificationSpec]:
    """{Notification name: spec (without targets)} for every recent failure of ``app``."""
    out: dict[str, NotificationSpec] = {}
    for dep in deployments:
        if dep.spec.app != app or dep.metadata.deletion_timestamp is not None:
            continue
        for found in (_failed(dep, now), _rollback(dep, deployments, now)):
            if found is not None:
                out[found[0]] = found[1]
    found = _crash_loop(live, instances, now)
    if found is not None:
        out[found[0]] = found[1]
    return out


def error_rate_alert(
    app: str, total: int, errors: int, now: float, settings: ErrorRateSettings, release: str = ""
) -> tuple[str, NotificationSpec] | None:
    """An ErrorRate notification when ``errors`` of ``total`` requests over the last
    ``settings.window_seconds`` pass the threshold (more than ``rate``, at least ``min_requests``),
    named by the 10-second bucket it was raised in."""
    if total < settings.min_requests or total <= 0 or errors / total <= settings.rate:
        return None
    share = errors / total
    spec = NotificationSpec(
        event="ErrorRate",
        app=app,
        release=release,
        reason="HighErrorRate",
        message=(
            f"{errors} of {total} requests ({share:.1%}) answered 5xx in the last "
            f"{settings.window_seconds:g}s (threshold: more than {settings.rate:.1%} of at least "
            f"{settings.min_requests})"
        ),
        time=iso(now),
    )
    return f"{app}.errorrate.{int(now // 10) * 10}", spec


def is_repeat_alert(earlier: Iterable[Notification], app: str, now: float) -> bool:
    """True while an ErrorRate message of ``app`` went out less than ``ERROR_RATE_REPEAT_SECONDS``
    ago: a sustained error rate is one message an hour, not one a minute."""
    return any(
        n.spec.event == "ErrorRate"
        and n.spec.app == app
        and n.spec.time
        and now - parse_iso(n.spec.time) < ERROR_RATE_REPEAT_SECONDS
        for n in earlier
    )


# --------------------------------------------------------------------------- the message

TITLES: Final[dict[str, str]] = {
    "DeployFailed": "deploy failed",
    "RolledBack": "rolled back",
    "CrashLoop": "crash loop",
    "ErrorRate": "high error rate",
    "Test": "test notification",
}
ICONS: Final[dict[str, str]] = {
    "DeployFailed": ":x:",
    "RolledBack": ":rewind:",
    "CrashLoop": ":boom:",
    "ErrorRate": ":warning:",
    "Test": ":bell:",
}


def _mrkdwn(text: str) -> str:
    """Slack's three escapes: its markup must not be injectable through an app's output."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def dashboard_link(dashboard_url: str, app: str) -> str:
    return f"{dashboard_url.rstrip('/')}/ui/index.html#/apps/{app}"


def message_body(name: str, uid: str, spec: NotificationSpec, fmt: str, dashboard_url: str) -> dict[str, Any]:
    """The JSON posted: Slack's ``text`` + ``blocks``; ``generic`` adds ``forge`` (structured)."""
    title = TITLES.get(spec.event, spec.event)
    # an install-wide test names no App: the dashboard's front page, "Forge" as the subject
    link = (
        dashboard_link(dashboard_url, spec.app) if spec.app else f"{dashboard_url.rstrip('/')}/ui/index.html"
    )
    what = f"{spec.app or 'Forge'}: {title}" + (f" — {spec.release}" if spec.release else "")
    text = f"{ICONS.get(spec.event, '')} {what} ({spec.reason})".strip() if spec.reason else what
    facts = [f"*App:* {_mrkdwn(spec.app)}"] if spec.app else []
    if spec.release:
        facts.append(f"*Release:* {_mrkdwn(spec.release)}")
    if spec.commit:
        facts.append(f"*Commit:* `{spec.commit[:12]}`")
    if spec.reason:
        facts.append(f"*Reason:* {_mrkdwn(spec.reason)}")
    label = f"Open {_mrkdwn(spec.app)} in Forge" if spec.app else "Open Forge"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_mrkdwn(what)}*"}},
    ]
    if facts:
        blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in facts]})
    if spec.message:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(spec.message)[:2900]}})
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"<{link}|{label}>"}],
        }
    )
    body: dict[str, Any] = {"text": text, "blocks": blocks}
    if fmt == "generic":
        body["forge"] = {
            "id": f"{name}/{uid}",
            "event": spec.event,
            "app": spec.app,
            "release": spec.release,
            "commit": spec.commit,
            "reason": spec.reason,
            "message": spec.message,
            "time": spec.time,
            "url": link,
        }
    return body


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date); None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None
