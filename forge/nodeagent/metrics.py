"""The agent's Prometheus metrics, computed at scrape time from /proc and cgroup stats.

A custom collector on the agent's own registry (never the global one) yields node gauges and,
per supervised Instance, memory, CPU seconds, restarts and OOM kills labelled by app,
deployment and instance. Nothing is sampled between scrapes, so an idle agent spends nothing.
``instance_stats`` is the one reading of the Instances' cgroups: the collector and the usage
sampler (``forge.nodeagent.usage``) both use it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from forge import errors
from forge.cgroups.base import CgroupStats
from forge.nodeagent.node import meminfo
from forge.nodeagent.state import AgentState, InstanceState

log = logging.getLogger(__name__)
LABELS = ["app", "deployment", "instance"]


def cpu_times(path: str = "/proc/stat") -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs."""
    first = Path(path).read_text().split("\n", 1)[0].split()[1:]
    vals = [float(v) for v in first]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return sum(vals) - idle, sum(vals)


def cgroup_stats(driver: Any, cgroup: str) -> CgroupStats | None:
    """The group's stats through the node's cgroup driver (v1 or v2); None without a driver or
    when the group is gone (the Instance stopped meanwhile)."""
    if driver is None:
        return None
    try:
        return driver.stats(cgroup) if driver.exists(cgroup) else None
    except (OSError, errors.ForgeError) as exc:
        log.debug("no stats for %s: %s", cgroup, exc)
        return None


def instance_stats(state: AgentState, driver: Any) -> list[tuple[InstanceState, CgroupStats | None]]:
    """Every Instance the agent supervises, with its cgroup's stats (None: none to read)."""
    with state.lock:
        instances = list(state.instances.values())
    return [(st, cgroup_stats(driver, st.cgroup)) for st in instances]


class AgentCollector(Collector):
    def __init__(
        self,
        state: AgentState,
        driver: Any,
        last_heartbeat: Callable[[], float],
        release_dirs_removed: Callable[[], float] | None = None,
        log_drops: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.state, self.driver, self.last_heartbeat = state, driver, last_heartbeat
        self.release_dirs_removed = release_dirs_removed
        self.log_drops = log_drops
        self._lock = threading.Lock()
        self._prev = cpu_times()

    def _cpu_used(self) -> float:
        """Fraction of all cores busy since the previous scrape (or since the agent started)."""
        with self._lock:
            busy, total = cpu_times()
            pb, pt = self._prev
            self._prev = (busy, total)
        return (busy - pb) / (total - pt) if total > pt else 0.0

    def collect(self) -> Iterator[Any]:
        mem = meminfo()
        total = mem.get("MemTotal", 0)
        yield GaugeMetricFamily(
            "forge_agent_cpu_used",
            "Fraction of the node's CPU in use since the last scrape",
            value=self._cpu_used(),
        )
        yield GaugeMetricFamily(
            "forge_agent_memory_used_bytes",
            "Node memory in use (MemTotal - MemAvailable)",
            value=total - mem.get("MemAvailable", total),
        )
        yield GaugeMetricFamily("forge_agent_memory_capacity_bytes", "Node memory capacity", value=total)
        yield GaugeMetricFamily(
            "forge_agent_last_heartbeat_seconds",
            "Unix time of the last successful Lease renewal",
            value=self.last_heartbeat(),
        )
        mem_g = GaugeMetricFamily(
            "forge_instance_memory_bytes", "Memory used by the Instance's cgroup", labels=LABELS
        )
        cpu_c = CounterMetricFamily(
            "forge_instance_cpu_seconds", "CPU time used by the Instance's cgroup", labels=LABELS
        )
        restarts = CounterMetricFamily(
            "forge_instance_restarts", "Restarts of the Instance on this node", labels=LABELS
        )
        ooms = CounterMetricFamily(
            "forge_instance_oom_kills", "OOM kills in the Instance's cgroup", labels=LABELS
        )
        processes = 0
        for st, stats in instance_stats(self.state, self.driver):
            labels = [st.app, st.deployment, st.name]
            restarts.add_metric(labels, st.restarts)
            if stats is None:
                ooms.add_metric(labels, st.oom_kills)
                processes += 1 if st.pid else 0
                continue
            processes += stats.pids
            mem_g.add_metric(labels, stats.memory_bytes)
            cpu_c.add_metric(labels, stats.cpu_seconds)
            ooms.add_metric(labels, max(st.oom_kills, stats.oom_kills))
        yield GaugeMetricFamily("forge_agent_processes", "Processes supervised by the agent", value=processes)
        yield from (mem_g, cpu_c, restarts, ooms)
        if self.log_drops is not None:
            drops = CounterMetricFamily(
                "forge_agent_log_lines_dropped",
                "Log lines an Instance printed past the log rate limit (not shipped)",
                labels=["instance"],
            )
            for inst, n in sorted(dict(self.log_drops()).items()):
                drops.add_metric([inst], n)
            yield drops
        if self.release_dirs_removed is not None:
            yield CounterMetricFamily(
                "forge_agent_release_dirs_removed",
                "Release dirs deleted by the agent's disk GC",
                value=self.release_dirs_removed(),
            )


def serve_metrics(listen: str, collector: Collector) -> tuple[Any, threading.Thread]:
    """Serve the agent's own registry on ``HOST:PORT`` in a daemon thread; returns (server, thread)."""
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
