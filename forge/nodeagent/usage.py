"""The agent's resource series (#25): every ``USAGE_SECONDS`` each running Instance's cgroup is
read (``forge.nodeagent.metrics.instance_stats``, the same reading the Prometheus collector
does, through the v1 or v2 driver) and its CPU, memory and restarts go to the control plane
as one batch: ``POST /api/v1/nodes/NODE/usage``.

- CPU is cores used on average since the previous sample (the cgroup's CPU seconds over the
  monotonic time between the two readings). The first sample of an Instance the sampler has
  not seen before uses its start instead, when it started within the last two intervals; an
  older one (the agent restarted) gets no CPU figure for that one point.
- Memory is the cgroup's usage at the sample; restarts are those since the previous sample.
- Each batch has an id (this agent run's random prefix and a counter), so a batch sent again
  after a lost answer is counted once. Batches the API did not take wait in a bounded queue
  (``MAX_PENDING``, ~10 minutes) and go out, oldest first, with the next one; past that the
  oldest are dropped and counted.

The sampler is a key of the agent's work queue (``Agent.process``), requeued for the next
10-second boundary: nothing sleeps or polls.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from forge import errors
from forge.appmetrics import bucket_of
from forge.clock import Clock
from forge.nodeagent.metrics import instance_stats
from forge.nodeagent.state import AgentState
from forge.series import USAGE_SECONDS, UsageSample

log = logging.getLogger(__name__)

MAX_PENDING: Final[int] = 60


@dataclass
class _Seen:
    cpu_seconds: float
    mono: float
    restarts: int


class UsageSampler:
    def __init__(
        self,
        client: Any,
        node: str,
        state: AgentState,
        driver: Any,
        clock: Clock,
        interval: float = USAGE_SECONDS,
    ) -> None:
        self.client, self.node, self.state, self.driver, self.clock = client, node, state, driver, clock
        self.interval = interval
        self.pending: deque[dict[str, Any]] = deque()
        self.dropped_total = 0
        self._seen: dict[str, _Seen] = {}
        self._run = secrets.token_hex(6)
        self._seq = 0

    def tick(self) -> float:
        """Sample, send what is pending; returns the seconds until the next tick."""
        self.sample()
        self.flush()
        return self.next_delay()

    def next_delay(self) -> float:
        """Up to the next multiple of ``interval`` on the wall clock (+ a little): every node
        samples near the same moment, so their points share a 10 s bucket."""
        now = self.clock.now()
        return self.interval - now % self.interval + 0.2

    def sample(self) -> list[UsageSample]:
        """Read every running Instance's cgroup once and queue the batch."""
        mono, at = self.clock.monotonic(), bucket_of(self.clock.now())
        out: list[UsageSample] = []
        seen: dict[str, _Seen] = {}
        for st, stats in instance_stats(self.state, self.driver):
            prev = self._seen.get(st.name)
            if stats is None or not st.pid:
                if prev is not None:  # waiting to start again: its restarts count when it is back
                    seen[st.name] = prev
                continue
            cpu: float | None = None
            restarts = 0
            if prev is not None:
                restarts = max(0, st.restarts - prev.restarts)
                if stats.cpu_seconds >= prev.cpu_seconds and mono > prev.mono:
                    cpu = (stats.cpu_seconds - prev.cpu_seconds) / (mono - prev.mono)
                else:  # the group was made anew (a restart): its counter started from 0
                    cpu = self._since_start(st.started_mono, stats.cpu_seconds, mono)
            else:
                cpu = self._since_start(st.started_mono, stats.cpu_seconds, mono)
            seen[st.name] = _Seen(stats.cpu_seconds, mono, st.restarts)
            out.append(
                UsageSample(st.name, at, None if cpu is None else round(cpu, 5), stats.memory_bytes, restarts)
            )
        self._seen = seen
        if out:
            self._seq += 1
            if len(self.pending) >= MAX_PENDING:
                self.dropped_total += len(self.pending.popleft()["samples"])
            self.pending.append({"id": f"{self._run}-{self._seq}", "samples": [s.to_json() for s in out]})
        return out

    def _since_start(self, started_mono: float | None, cpu_seconds: float, mono: float) -> float | None:
        if started_mono is None or not 0 < mono - started_mono <= 2 * self.interval:
            return None
        return max(0.0, cpu_seconds) / (mono - started_mono)

    def flush(self) -> None:
        """Send the pending batches, oldest first; keep them when the API is unavailable."""
        while self.pending:
            batch = self.pending[0]
            try:
                self.client.request("POST", f"/api/v1/nodes/{self.node}/usage", json=batch)
            except errors.Unavailable as exc:  # TooManyRequests too
                log.info(
                    "usage of node %s not sent yet (%d batches wait): %s", self.node, len(self.pending), exc
                )
                return
            except errors.ForgeError as exc:  # refused as it is: sending it again cannot help
                log.warning("usage batch %s refused: %s", batch["id"], exc)
                self.dropped_total += len(batch["samples"])
            self.pending.popleft()
