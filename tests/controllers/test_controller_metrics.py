"""The controllers' metrics endpoint (``forge controllers --metrics-listen``) passes promtool."""

from __future__ import annotations

import dataclasses
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from forge.clock import SystemClock
from forge.config import Config
from forge.controllers.manager import run_controllers
from forge.store.base import Store
from tests.metrics_helpers import assert_promtool_clean, needs_promtool, parse_exposition


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_until(url: str, done: Callable[[str], bool], timeout: float = 20.0) -> str:
    clock, stop = SystemClock(), threading.Event()
    deadline, text = clock.monotonic() + timeout, ""
    while clock.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except urllib.error.URLError:  # the server starts in the controllers' thread
            text = ""
        if done(text):
            break
        stop.wait(0.05)  # bounded wait for the runtime's worker threads, which run on real time
    return text


@needs_promtool
def test_controller_metrics_pass_promtool(
    store: Store, config: Config, make_app: Callable[..., Any], make_deployment: Callable[..., Any],
    make_node: Callable[..., Any],
) -> None:
    """Runtime, leader and tally metrics served by run_controllers are promtool-clean."""
    cfg = config
    make_node("n1")
    make_deployment(make_app("hello"), 1, manifest=True)
    port = free_port()
    stop = threading.Event()
    t = threading.Thread(target=run_controllers, args=(cfg, store, SystemClock(), stop),
                         kwargs={"metrics_listen": f"127.0.0.1:{port}", "identity": "cp-metrics"}, daemon=True)
    t.start()
    try:
        want = ('forge_controller_reconcile_total{controller="tally",result="success"}',
                "forge_controller_leader 1.0")

        def ready(text: str) -> bool:
            return all(w in text for w in want)

        text = scrape_until(f"http://127.0.0.1:{port}/metrics", ready)
    finally:
        stop.set()
        t.join(20)
    assert not t.is_alive()
    assert ready(text), text
    assert_promtool_clean(text)
    exp = parse_exposition(text)
    assert exp.types["forge_controller_reconcile_total"] == "counter"
    assert exp.types["forge_controller_reconcile_seconds"] == "histogram"
    assert exp.types["forge_controller_queue_depth"] == "gauge"
    depth = exp.by_label("forge_controller_queue_depth", "controller")
    assert {"tally", "rollout", "router", "scheduler", "gc"} <= set(depth)
    assert store.tally("forge_deployments_total").get("Pending", 0) >= 1  # the tally ran for real


def test_busy_metrics_port_does_not_stop_the_controllers(
    store: Store, config: Config, make_app: Callable[..., Any], make_deployment: Callable[..., Any],
) -> None:
    """When the metrics address is taken the controllers still lead and reconcile (the error is logged)."""
    from forge.controllers.leader import LEASE_NAME

    cfg = dataclasses.replace(config, caddy_admin="127.0.0.1:1")
    make_deployment(make_app("hello"), 1, manifest=True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        stop = threading.Event()
        t = threading.Thread(target=run_controllers, args=(cfg, store, SystemClock(), stop), daemon=True,
                             kwargs={"metrics_listen": f"127.0.0.1:{busy.getsockname()[1]}", "identity": "cp-busy"})
        t.start()
        try:
            clock = SystemClock()
            deadline = clock.monotonic() + 20
            while not store.tally("forge_deployments_total") and clock.monotonic() < deadline:
                stop.wait(0.05)  # bounded wait for the runtime's threads
            assert t.is_alive()
            assert store.get("Lease", LEASE_NAME).spec.holder == "cp-busy"
            assert store.tally("forge_deployments_total").get("Pending") == 1
        finally:
            stop.set()
            t.join(20)
    assert not t.is_alive()
