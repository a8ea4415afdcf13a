"""Sending closed request buckets to the API (#25): ``POST /api/v1/metrics/requests``.

At least once: closed buckets go into a bounded in-memory outbox of batches (at most
``MAX_SAMPLES_PER_BATCH`` samples and ``MAX_BATCH_BYTES`` of JSON each, so a batch always fits the
API's body limit), each batch with an id unique to this proxy process (a random prefix per start
and a sequence number), and a batch leaves the outbox only when the API acknowledged it; the API
remembers ids, so a batch sent again after a lost answer is not counted twice. The outbox holds
at most ``MAX_PENDING_SAMPLES``: while the API is away for long, the oldest batches are dropped
and counted (``forge_proxy_request_samples_dropped_total``). A batch the API refuses as invalid
(400/413) would be refused forever: it is dropped and counted too, with an error in the log.

``RequestSender`` is one more reconciler of the proxy (``forge.proxy.daemon``), with a single
key: its worker's queue is the only timer and its per-key back-off the only retry. Nothing
polls: the key runs when a bucket opens (the counter's ``wake``) and when the next one is due
to close (the ``requeue_after`` it returns).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from forge import errors
from forge.appmetrics import MAX_SAMPLES_PER_BATCH, RequestSample
from forge.client import ForgeClient
from forge.clock import Clock
from forge.models import Resource
from forge.proxy.reqmetrics import RequestCounter

log = logging.getLogger(__name__)

PATH: Final[str] = "/api/v1/metrics/requests"
MAX_BATCH_BYTES: Final[int] = 512 * 1024  # the API takes bodies up to 1 MiB
MAX_PENDING_SAMPLES: Final[int] = 100_000  # ~25 MB at worst; hours of a few hundred apps


class Outbox:
    """Batches waiting for the API's acknowledgement, oldest first, bounded in samples."""

    def __init__(self, max_samples: int = MAX_PENDING_SAMPLES) -> None:
        self.max_samples = max_samples
        self._lock = threading.Lock()
        self._batches: deque[tuple[str, list[dict[str, Any]]]] = deque()
        self._prefix = secrets.token_hex(6)
        self._seq = 0
        self.pending = 0
        self.dropped = 0

    def put(self, samples: Iterable[RequestSample]) -> None:
        batch: list[dict[str, Any]] = []
        size = 0
        with self._lock:
            for sample in samples:
                raw = sample.to_json()
                n = len(json.dumps(raw, separators=(",", ":"))) + 1
                if batch and (len(batch) >= MAX_SAMPLES_PER_BATCH or size + n > MAX_BATCH_BYTES):
                    self._append(batch)
                    batch, size = [], 0
                batch.append(raw)
                size += n
            if batch:
                self._append(batch)
            while self.pending > self.max_samples and self._batches:
                _, oldest = self._batches.popleft()
                self.pending -= len(oldest)
                self.dropped += len(oldest)

    def _append(self, batch: list[dict[str, Any]]) -> None:
        self._seq += 1
        self._batches.append((f"{self._prefix}-{self._seq}", batch))
        self.pending += len(batch)

    def first(self) -> tuple[str, list[dict[str, Any]]] | None:
        with self._lock:
            return self._batches[0] if self._batches else None

    def done(self, batch_id: str, dropped: bool = False) -> None:
        """The batch ``batch_id`` was acknowledged (or refused for good: ``dropped``)."""
        with self._lock:
            if self._batches and self._batches[0][0] == batch_id:
                _, batch = self._batches.popleft()
                self.pending -= len(batch)
                if dropped:
                    self.dropped += len(batch)


class RequestSender:
    """The proxy's reconciler of key ``send``: close due buckets, send what waits, oldest first."""

    name = "requests"
    KEY: Final[str] = "send"

    def __init__(
        self,
        counter: RequestCounter,
        client: ForgeClient,
        proxy_name: str,
        clock: Clock,
        outbox: Outbox | None = None,
    ) -> None:
        self.counter, self.client, self.proxy_name, self.clock = counter, client, proxy_name, clock
        self.outbox = outbox or Outbox()
        self.sent = 0

    def keys_for(self, old: Resource | None, new: Resource | None) -> Iterable[str]:
        return ()  # driven by the counter's buckets, not by records

    def all_keys(self) -> Iterable[str]:
        return (self.KEY,)

    def reconcile(self, key: str) -> float | None:
        now = self.clock.now()
        self.outbox.put(self.counter.close_due(now))
        self.counter.expire(now)
        self._send_all()  # raises on the first failure: the worker retries with back-off
        return self.counter.next_due(self.clock.now())

    def flush(self) -> None:
        """On a clean stop: every bucket, the open ones too, and one try to send what waits
        (what the API does not take now is lost with the process; nothing is counted twice,
        since a new proxy reads only what Caddy logs after it started)."""
        self.outbox.put(self.counter.close_due(float("inf")))
        try:
            self._send_all()
        except errors.ForgeError as exc:
            log.warning("proxy: %d request samples not sent at exit: %s", self.outbox.pending, exc)

    def _send_all(self) -> None:
        while (batch := self.outbox.first()) is not None:
            batch_id, samples = batch
            body = {"proxy": self.proxy_name, "id": batch_id, "samples": samples}
            try:
                self.client.request("POST", PATH, json=body)
            except (errors.Invalid, errors.PayloadTooLarge) as exc:
                log.error("proxy: the API refused request-metrics batch %s for good: %s", batch_id, exc)
                self.outbox.done(batch_id, dropped=True)
                continue
            self.outbox.done(batch_id)
            self.sent += len(samples)

    def metrics(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        pending = GaugeMetricFamily(
            "forge_proxy_request_samples_pending", "Closed request buckets waiting for the API"
        )
        pending.add_metric([], self.outbox.pending)
        yield pending
        dropped = CounterMetricFamily(
            "forge_proxy_request_samples_dropped",
            "Closed request buckets dropped (the API away too long, or refusing them)",
        )
        dropped.add_metric([], self.outbox.dropped)
        yield dropped
        sent = CounterMetricFamily("forge_proxy_request_samples_sent", "Request buckets the API acknowledged")
        sent.add_metric([], self.sent)
        yield sent
