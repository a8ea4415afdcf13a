"""What the dashboard needs of the API: paginated lists (Events newest first) and app logs
without the agent's health-check lines."""

from __future__ import annotations

import json
import random

import pytest

from forge.clock import SystemClock, iso
from forge.models import (
    Deployment,
    DeploymentSpec,
    Event,
    EventSpec,
    Manifest,
    ObjectMeta,
    ObjectRef,
    Trigger,
)
from forge.probes import PROBE_USER_AGENT, is_probe_line
from tests.api.conftest import COMMIT1, Api, app_body

BASE = 1_800_000_000.0


def _event(api: Api, name: str, at: float, app: str = "hello") -> Event:
    return api.store.create(
        Event(
            metadata=ObjectMeta(name=name, labels={"forge.dev/app": app}),
            spec=EventSpec(
                involved_object=ObjectRef(kind="App", name=app),
                reason="Test",
                message=name,
                first_time=iso(at),
                last_time=iso(at),
            ),
        )
    )


def _recur(api: Api, name: str, at: float) -> None:
    ev = api.store.get(Event, name)
    ev.spec.last_time, ev.spec.count = iso(at), ev.spec.count + 1
    api.store.update(ev)


def _pages(api: Api, path: str, limit: int, between=None, **query: str) -> list[list[str]]:
    pages, token = [], None
    for _ in range(100):
        params = {**query, "limit": str(limit), **({"continue": token} if token else {})}
        r = api.req("GET", path, params=params)
        assert r.status_code == 200, r.text
        pages.append([e["metadata"]["name"] for e in r.json["items"]])
        token = r.json["metadata"].get("continue")
        if not token:
            assert "remainingItemCount" not in r.json["metadata"]
            return pages
        assert r.json["metadata"]["remainingItemCount"] > 0
        if between:
            between(len(pages))
    raise AssertionError("paging never ended")


def test_events_page_newest_first_and_each_once(api: Api) -> None:
    """Pages of Events come newest first (ties by name), every Event exactly once, the last page
    without a continue token; a selector pages within its matches."""
    rng = random.Random(7)
    times = {f"ev-{i:02d}": BASE + rng.choice(range(10)) for i in range(23)}  # many ties in lastTime
    for name, at in times.items():
        _event(api, name, at)
    _event(api, "other-1", BASE + 50, app="other")
    pages = _pages(api, "/api/v1/events", 5, labelSelector="forge.dev/app=hello")
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    seen = [n for p in pages for n in p]
    assert seen == sorted(times, key=lambda n: (times[n], n), reverse=True)
    whole = api.req("GET", "/api/v1/events").json
    assert [e["metadata"]["name"] for e in whole["items"]][0] == "other-1" and "continue" not in whole[
        "metadata"
    ]


def test_event_pages_while_events_recur_and_arrive(api: Api) -> None:
    """Between pages, new Events arrive and old ones recur (move to the front): no Event that
    stayed put is missed or repeated, and nothing after the cursor shows up twice."""
    for i in range(12):
        _event(api, f"ev-{i:02d}", BASE + i)
    still = {f"ev-{i:02d}" for i in range(12)} - {"ev-02", "ev-09"}

    def churn(n: int) -> None:
        _event(api, f"new-{n}", BASE + 100 + n)
        _recur(api, "ev-02" if n == 1 else "ev-09", BASE + 200 + n)

    seen = [x for p in _pages(api, "/api/v1/events", 4, churn) for x in p]
    assert len(seen) == len(set(seen)), seen
    assert still <= set(seen)


def test_other_kinds_page_by_name_and_bad_tokens_are_400(api: Api) -> None:
    """Apps page in name order; a continue token this API did not give out is 400 naming it."""
    for n in ("c", "a", "e", "b", "d"):
        api.create("apps", app_body(n))
    assert _pages(api, "/api/v1/apps", 2) == [["a", "b"], ["c", "d"], ["e"]]
    for bad in ("nope!", "W10", "eyJ4IjoxfQ"):
        r = api.req("GET", "/api/v1/apps", params={"limit": "2", "continue": bad})
        assert r.status_code == 400 and r.json["details"][0]["path"] == "continue", r.text
    assert api.req("GET", "/api/v1/apps", params={"limit": "0"}).status_code == 400


@pytest.mark.parametrize(
    ("line", "path", "probe"),
    [
        ('10.0.0.1 - - [x] "GET /health HTTP/1.1" 200 2', "/health", True),
        ("request /health", "/health", True),
        ('"GET /health?full=1 HTTP/1.1" 200', "/health", True),
        ('"GET /healthz HTTP/1.1" 200', "/health", False),
        ('"GET /api/health HTTP/1.1" 200', "/health", False),
        ('"GET / HTTP/1.1" 200', "/", False),
        (f'"GET / HTTP/1.1" 200 2 "-" "{PROBE_USER_AGENT}"', "/", True),
        ("starting v1 on 8000", "/health", False),
    ],
    ids=["access-log", "bare", "query", "other-path", "deeper-path", "root-no-ua", "root-ua", "plain"],
)
def test_probe_lines(line: str, path: str, probe: bool) -> None:
    """A line is a health check when it carries the prober's User-Agent or names the release's
    (non-root) health path as a whole request path."""
    assert is_probe_line(line, path) is probe


def test_app_logs_without_probes(api: Api) -> None:
    """probes=false leaves out each release's own health-check lines (build output never), and
    tail counts only the lines shown."""
    api.create("apps", app_body())
    for n, path in ((1, "/health"), (2, "/ready")):
        dep = api.store.create(
            Deployment(
                metadata=ObjectMeta(name=f"hello-{n}", labels={"forge.dev/app": "hello"}),
                spec=DeploymentSpec(
                    app="hello", commit=COMMIT1, repo="acme/hello", trigger=Trigger(type="api")
                ),
            )
        )
        dep.status.manifest = Manifest.model_validate({"run": {"command": "app"}, "health": {"path": path}})
        api.store.update_status(dep)
    now = SystemClock().now_iso()
    lines = {
        ("hello-1", "build"): ["GET /health in the build"],
        ("hello-1", "app"): ["request /health", "request /", "request /health", "request /ready"],
        ("hello-2", "app"): ["request /health", "request /ready", "request /ready"],
    }
    for (dep_name, source), texts in lines.items():
        api.store.append_logs(
            f"{dep_name}-0", "hello", dep_name, source, [(i, now, t) for i, t in enumerate(texts)]
        )

    def read(**params: str) -> list[str]:
        r = api.req("GET", "/api/v1/apps/hello/logs", params=params)
        assert r.status_code == 200, r.text
        return [json.loads(x)["line"] for x in r.text.splitlines() if x.strip()]

    assert len(read()) == 8 and len(read(probes="true")) == 8
    assert read(probes="false") == [
        "GET /health in the build",
        "request /",
        "request /ready",
        "request /health",
    ]
    assert read(probes="false", tail="3") == ["request /", "request /ready", "request /health"]
    assert api.req("GET", "/api/v1/apps/hello/logs", params={"probes": "maybe"}).status_code == 400
