"""Per-app time series in and out (#25).

- ``POST /api/v1/metrics/requests`` (admin: the token every ``forge proxy`` runs with):
  ``{"proxy": NAME, "id": BATCH_ID, "samples": [RequestSample.to_json, ...]}``. A batch id the
  store already has from that proxy is acknowledged (``"duplicate": true``) and not counted
  again; samples of two proxies for one (app, release, at) add up. Samples of an App that does
  not exist (deleted meanwhile) and samples out of the kept range (older than 30 days, more
  than 10 minutes ahead) are dropped and counted in ``dropped``.
- ``POST /api/v1/nodes/{name}/usage`` (that node's token, or admin): ``{"id": BATCH_ID,
  "samples": [UsageSample.to_json, ...]}`` — its Instances' CPU, memory and restarts. An
  Instance bound to another node is refused (403); one already deleted is dropped.
- ``GET /api/v1/apps/{name}/metrics?since=10m`` (admin): ``forge.seriesview``.

Bodies are validated to the field (``400`` naming e.g. ``samples[3].byClass.6xx``); a body over
``MAX_SERIES_BODY`` bytes, or a batch of more samples than the contract allows, is ``413``.
"""

from __future__ import annotations

import re
from typing import Any, Final

import falcon

from forge.api import auth
from forge.api.body import read_object, send
from forge.api.context import ApiContext
from forge.appmetrics import MAX_SAMPLES_PER_BATCH, RequestSample, SampleError
from forge.clock import parse_iso
from forge.errors import BadRequest, NotFound, PayloadTooLarge
from forge.models import LABEL_APP, LABEL_NODE, App, Deployment, Instance
from forge.series import (
    MAX_USAGE_PER_BATCH,
    UsageSample,
    WindowError,
    grid,
    in_range,
    parse_window,
    step_for,
)
from forge.seriesview import app_metrics_view

MAX_SERIES_BODY: Final[int] = 4 * 1024 * 1024
# Printable ASCII without spaces: names and ids are the sender's own (a host name, a counter).
SOURCE_NAME: Final = re.compile(r"^[!-~]{1,253}$")
BATCH_ID: Final = re.compile(r"^[!-~]{1,128}$")
DEFAULT_WINDOW: Final[str] = "1h"


def _bad(path: str, message: str) -> BadRequest:
    return BadRequest(f"{path}: {message}", [{"path": path, "message": message}])


def _sample_error(exc: SampleError) -> BadRequest:
    path, _, message = str(exc).partition(": ")
    return _bad(path, message or "invalid")


def _batch(body: dict[str, Any], fields: set[str], limit: int) -> tuple[str, list[Any]]:
    """The checked ``id`` and raw ``samples`` of a batch body."""
    unknown = sorted(set(body) - fields)
    if unknown:
        raise _bad(unknown[0], "unknown field")
    batch_id = body.get("id")
    if not isinstance(batch_id, str) or not BATCH_ID.match(batch_id):
        raise _bad("id", "expected a batch id: 1 to 128 printable ASCII characters, no spaces")
    samples = body.get("samples")
    if not isinstance(samples, list):
        raise _bad("samples", "expected a list of samples")
    if len(samples) > limit:
        raise PayloadTooLarge(f"samples: {len(samples)} samples in one batch, over the limit of {limit}")
    return batch_id, samples


class RequestSamplesResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        auth.require_admin(req)
        body = read_object(req, limit=MAX_SERIES_BODY)
        batch_id, raw = _batch(body, {"proxy", "id", "samples"}, MAX_SAMPLES_PER_BATCH)
        proxy = body.get("proxy")
        if not isinstance(proxy, str) or not SOURCE_NAME.match(proxy):
            raise _bad("proxy", "expected the proxy's name: 1 to 253 printable ASCII characters, no spaces")
        try:
            samples = [RequestSample.from_json(s, f"samples[{i}]") for i, s in enumerate(raw)]
        except SampleError as exc:
            raise _sample_error(exc) from None
        now = self.ctx.clock.now()
        known = {a for a in {s.app for s in samples} if self._exists(a)}
        kept = [s for s in samples if s.app in known and in_range(s.at, now)]
        added = self.ctx.store.add_requests(f"proxy/{proxy}", batch_id, kept)
        send(
            resp,
            {
                "accepted": len(kept) if added else 0,
                "dropped": len(samples) - len(kept),
                "duplicate": not added,
            },
        )

    def _exists(self, app: str) -> bool:
        try:
            self.ctx.store.get(App, app)
        except NotFound:
            return False
        return True


class NodeUsageResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        p = auth.principal(req)
        if not p.admin and p.node != name:
            raise auth.forbid(p, f"report usage for Node {name}")
        body = read_object(req, limit=MAX_SERIES_BODY)
        batch_id, raw = _batch(body, {"id", "samples"}, MAX_USAGE_PER_BATCH)
        try:
            samples = [UsageSample.from_json(s, f"samples[{i}]") for i, s in enumerate(raw)]
        except SampleError as exc:
            raise _sample_error(exc) from None
        ours = {i.metadata.name: i for i in self.ctx.store.list(Instance, {LABEL_NODE: name})[0]}
        kept: list[tuple[str, UsageSample]] = []
        now = self.ctx.clock.now()
        for i, s in enumerate(samples):
            if not in_range(s.at, now):
                continue
            inst = ours.get(s.instance)
            if inst is None:
                try:
                    self.ctx.store.get(Instance, s.instance)
                except NotFound:
                    continue  # deleted since it was sampled: nothing to keep it for
                raise auth.forbid(
                    p, f"report usage of Instance {s.instance} (samples[{i}]: not bound to {name})"
                )
            kept.append((inst.spec.app, s))
        added = self.ctx.store.add_usage(f"node/{name}", batch_id, kept)
        send(
            resp,
            {
                "accepted": len(kept) if added else 0,
                "dropped": len(samples) - len(kept),
                "duplicate": not added,
            },
        )


class AppMetricsResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        self.ctx.store.get(App, name)
        since = (req.get_param("since") or DEFAULT_WINDOW).strip()
        try:
            window = parse_window(since)
        except WindowError as exc:
            raise _bad("since", str(exc)) from None
        step = step_for(window)
        points = grid(self.ctx.clock.now(), window, step)
        store = self.ctx.store
        view = app_metrics_view(
            name,
            since,
            step,
            points,
            store.read_requests(name, step, points[0], points[-1]),
            store.read_app_usage(name, step, points[0], points[-1]),
            self._releases(name),
        )
        resp.set_header("Cache-Control", "no-store")
        send(resp, view)

    def _releases(self, app: str) -> list[tuple[int, str]]:
        out = []
        for d in self.ctx.store.list(Deployment, {LABEL_APP: app})[0]:
            if d.spec.app != app or not d.status.live_time:
                continue
            try:
                out.append((int(parse_iso(d.status.live_time)), d.metadata.name))
            except ValueError:
                continue
        return out
