"""``POST /api/v1/webhook/github``: a signed GitHub delivery becomes Deployments (spec only).

Authenticated by its HMAC signature alone (``auth = False`` for the bearer-token middleware).
Order matters: size cap, then the signature over the raw body, and only then parsing, so an
unsigned sender cannot make the server parse anything. The handler only writes records and
answers in milliseconds; the source controller fetches the commit later.

Answers: 200 for ``ping``; 202 ``{"created": [...]}`` for a push that deploys, 202 with
``reason`` when nothing is tracked (and ``duplicate: true`` for a redelivered push);
401 bad/missing signature or no secret configured; 400 malformed payload or ``after``;
413 over 25 MiB. ``forge_webhook_deliveries_total{outcome}`` counts every delivery.

Redelivery is idempotent without a lock: the release number is derived from the listing, so
two workers handling copies of one delivery at once pick the same ``APP-N``; the loser gets
``AlreadyExists``, re-lists, finds the winner's ``spec.trigger.deliveryId`` and answers
``duplicate``. Two copies can only pick different numbers when one listed after the other's
create — and then it sees that Deployment.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import falcon
from prometheus_client import CollectorRegistry, Counter

from forge.api.body import read_raw
from forge.api.previews import PreviewDeliveries
from forge.clock import Clock
from forge.config import Config
from forge.errors import ForgeError, Invalid, PayloadTooLarge, Unauthorized, Unavailable
from forge.events import EventRecorder
from forge.github.auth import secret_aad, stored_app
from forge.github.hooks import installation_id
from forge.models import App, Deployment
from forge.release import app_secret, create_next_release, release_config, releasing
from forge.store.base import Store
from forge.webhook import (
    DELIVERY_ID,
    MAX_BODY,
    Push,
    build_deployment,
    decode_payload,
    find_delivery,
    ignore_reason,
    parse_push,
    select_apps,
    verify_signature,
)

log = logging.getLogger(__name__)

REASON_ALREADY_LIVE: Final[str] = "AlreadyLive"
OUTCOMES: Final[tuple[str, ...]] = (
    "created",
    "ignored",
    "duplicate",
    "invalid_signature",
    "bad_request",
    "too_large",
    "ping",
    "error",
)


class GithubWebhookResource:
    auth = False

    def __init__(self, store: Store, config: Config, clock: Clock, metrics: CollectorRegistry) -> None:
        self.store, self.config, self.clock = store, config, clock
        self.recorder = EventRecorder(store, clock, "webhook")
        self.deliveries = Counter(
            "forge_webhook_deliveries", "GitHub webhook deliveries by outcome", ["outcome"], registry=metrics
        )
        for outcome in OUTCOMES:
            self.deliveries.labels(outcome)
        self._warned_no_secret = False
        self._keyring: Any = None
        self.previews = PreviewDeliveries(store, clock)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = self.clock.monotonic()
        delivery = req.get_header("X-GitHub-Delivery")
        try:
            status, body, outcome = self._handle(req, delivery)
        except Unavailable as exc:
            # Accepted and verified, but not written (the store is down or its disk is full).
            # GitHub does not retry: say exactly which delivery to redeliver, here and in the log.
            self.deliveries.labels(_outcome_of(exc)).inc()
            what = f"delivery {delivery}" if delivery else "this delivery"
            log.error(
                "webhook %s was NOT recorded (%s): redeliver it from the repository's "
                "Settings → Webhooks → Recent Deliveries once the store is writable",
                what,
                exc.message,
            )
            raise Unavailable(
                f"{exc.message}; {what} was not recorded: redeliver it from the repository's "
                "Settings → Webhooks → Recent Deliveries once Forge's store is writable again",
                [{"path": "X-GitHub-Delivery", "message": delivery or "(none)"}],
            ) from None
        except ForgeError as exc:
            self.deliveries.labels(_outcome_of(exc)).inc()
            raise
        self.deliveries.labels(outcome).inc()
        resp.status = falcon.code_to_http_status(status)
        resp.media = body
        log.info(
            "webhook delivery %s: %s in %.1f ms", delivery, outcome, (self.clock.monotonic() - started) * 1000
        )

    # ------------------------------------------------------------------ steps

    def _handle(self, req: falcon.Request, delivery: str | None) -> tuple[int, dict[str, Any], str]:
        secrets = [s for s in (self.config.webhook_secret, self._app_secret()) if s]
        if not secrets:
            if not self._warned_no_secret:
                self._warned_no_secret = True
                log.warning("FORGE_GITHUB_WEBHOOK_SECRET is not set: refusing every GitHub delivery")
            raise Unauthorized("webhook secret is not configured on this server; deliveries are refused")
        raw = read_raw(req, MAX_BODY)
        signature = req.get_header("X-Hub-Signature-256")
        if not any(verify_signature(secret, raw, signature) for secret in secrets):
            why = "missing X-Hub-Signature-256 header" if not signature else "signature does not match"
            log.warning("webhook delivery %s refused: %s", (delivery or "-")[:128], why)
            raise Unauthorized(f"webhook delivery refused: {why}")
        if delivery is not None and not DELIVERY_ID.match(delivery):
            raise Invalid(
                "X-GitHub-Delivery is not a delivery id",
                [{"path": "X-GitHub-Delivery", "message": "at most 128 letters, digits, '-', '.', ':'"}],
            )
        payload = decode_payload(raw, req.content_type)
        event = (req.get_header("X-GitHub-Event") or "").strip()
        base = {"event": event, "deliveryId": delivery}
        if event == "ping":
            return 200, {"ok": True, **base, "zen": str(payload.get("zen", ""))[:200]}, "ping"
        if event in ("pull_request", "issue_comment"):  # previews (forge.previews)
            return self.previews.handle(event, payload, base)
        if event != "push":
            return (
                202,
                {**base, "created": [], "reason": f"event {event or '(none)'!r} deploys nothing"},
                "ignored",
            )
        push = parse_push(payload)
        reason = ignore_reason(push)
        apps: list[App] = []
        if reason is None:
            all_apps, _ = self.store.list(App)
            apps, reason = select_apps([a for a in all_apps if isinstance(a, App)], push)
        if reason is not None:
            return 202, {**base, "created": [], "reason": reason}, "ignored"
        created: list[str] = []
        duplicates: list[str] = []
        installation = installation_id(payload)
        for app in apps:
            name, is_new = self._deploy(app, push, delivery, installation)
            (created if is_new else duplicates).append(name)
        body: dict[str, Any] = {**base, "created": created}
        if duplicates:
            body.update(duplicate=not created, existing=duplicates)
        return 202, body, "created" if created else "duplicate"

    def _app_secret(self) -> str:
        """The webhook secret of the GitHub App ``forge github connect`` stored ("" when none)."""
        app = stored_app(self.store)
        if app is None or not app.spec.webhook_secret:
            return ""
        if self._keyring is None:
            from forge.secrets import Keyring

            self._keyring = Keyring.load(self.config)
        return str(self._keyring.decrypt(app.spec.webhook_secret, secret_aad(app.metadata.name)))

    def _deploy(
        self, app: App, push: Push, delivery: str | None, installation: int | None = None
    ) -> tuple[str, bool]:
        """Create the next release of ``app`` unless this delivery already made one, or the
        pushed commit is already live (or on its way) with the App's config: a redelivery with a
        new id or a replayed push then makes nothing (an Event says so)."""
        config = release_config(app, app_secret(self.store, app.metadata.name))
        already: list[Deployment] = []

        def make(n: int, deployments: list[Deployment]) -> tuple[Deployment, bool]:
            earlier = find_delivery(deployments, delivery)
            if earlier is not None:
                return earlier, False
            same = releasing(deployments, app.status.live_deployment, push.after, config)
            if same is not None:
                already.append(same)
                return same, False
            dep = build_deployment(app, n, push, delivery, config)
            dep.spec.trigger.installation_id = installation  # the App that sent it reports back
            return dep, True

        dep, new = create_next_release(self.store, app.metadata.name, make)
        if new:
            log.info("webhook: created Deployment %s (%s@%s)", dep.metadata.name, push.ref, push.after[:12])
        elif already:
            what = (
                "live" if dep.status.phase == "Live" else f"being released ({dep.status.phase or 'Pending'})"
            )
            self.recorder.record(
                app,
                "Normal",
                REASON_ALREADY_LIVE,
                f"push of {push.after[:12]} to {push.ref}: {dep.metadata.name} is already {what} with "
                "this commit and config; nothing new to release (forge deploy --force rebuilds it)",
            )
        return dep.metadata.name, new


def _outcome_of(exc: ForgeError) -> str:
    if isinstance(exc, Unauthorized):
        return "invalid_signature"
    if isinstance(exc, PayloadTooLarge):
        return "too_large"
    if isinstance(exc, Invalid):
        return "bad_request"
    return "error"
