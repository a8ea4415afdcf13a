"""Request metrics on a proxy host (#25): access-log lines parsed, counted per (app, release) —
one label set per App whatever the domain, unknown hosts apart —, closed into 10 s buckets,
exported to Prometheus with bounded series, and sent to a real HTTP server at least once."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from forge.appmetrics import LATENCY_BOUNDS, MAX_SAMPLES_PER_BATCH, RequestSample
from forge.client import ForgeClient
from forge.clock import FakeClock
from forge.errors import ForgeError
from forge.models import App, AppSpec, AppStatus, ObjectMeta
from forge.proxy.accesslog import AccessLogSocket, Entry, bare_host, caddy_logging, parse_entry
from forge.proxy.reqmetrics import CLOSE_GRACE, SERIES_TTL, RequestCollector, RequestCounter, host_targets
from forge.proxy.reqsender import MAX_BATCH_BYTES, Outbox, RequestSender
from tests.metrics_helpers import assert_promtool_clean, needs_promtool

T0 = 1_800_000_000.0  # a bucket boundary


def app(name: str, live: str | None, domains: tuple[str, ...] = ()) -> App:
    return App(
        metadata=ObjectMeta(name=name),
        spec=AppSpec(repo=f"acme/{name}", domains=list(domains)),
        status=AppStatus(live_deployment=live),
    )


def line(host: str, status: int, duration: float, ts: float) -> bytes:
    return json.dumps(
        {
            "level": "info",
            "ts": ts,
            "logger": "http.log.access.forge_access",
            "msg": "handled request",
            "request": {
                "remote_ip": "127.0.0.1",
                "proto": "HTTP/1.1",
                "method": "GET",
                "host": host,
                "uri": "/",
            },
            "duration": duration,
            "size": 2,
            "status": status,
        }
    ).encode()


class Apps:
    """A mutable stand-in for the proxy's records: the counter reads host_targets of it."""

    def __init__(self, *apps: App) -> None:
        self.apps = list(apps)

    def targets(self) -> dict[str, tuple[str, str]]:
        return host_targets(self.apps, "localhost")


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (line("web.localhost:8000", 200, 0.002, T0), Entry("web.localhost", 200, 0.002, T0)),
        (line("Web.localhost.", 503, 1.5, T0), Entry("Web.localhost.", 503, 1.5, T0)),
        (line("[::1]:8000", 404, 0.0, T0), Entry("::1", 404, 0.0, T0)),
        (line("web.localhost", 200, 0.1, T0)[:-20], None),
        (b'{"level":"info","msg":"serving initial configuration"}', None),
        (b'{"request":{"host":"a"},"status":"200","duration":0.1,"ts":1}', None),
        (b"\xff\xfe garbage", None),
        (b"", None),
    ],
    ids=[
        "port-and-case",
        "trailing-dot",
        "ipv6",
        "half-line",
        "other-log",
        "status-as-text",
        "garbage",
        "empty",
    ],
)
def test_parse_entry(raw: bytes, want: Entry | None) -> None:
    """A line gives host (without port, else as Caddy's lookup saw it), status, duration and time;
    anything else gives None."""
    assert parse_entry(raw) == want


def test_bare_host_keeps_a_bare_ipv6() -> None:
    """An IPv6 address without brackets is not mistaken for HOST:PORT."""
    assert bare_host("::1") == "::1"


def test_two_domains_of_one_app_are_one_label_set_and_unknown_hosts_are_apart() -> None:
    """APP.DOMAIN and a custom domain count into one (app, release); unknown and not-live hosts
    count as unrouted only, and so does a host Caddy's case-sensitive lookup did not route."""
    apps = Apps(app("web", "web-3", ("www.example.com",)), app("idle", None))
    c = RequestCounter(apps.targets)
    for host, status in [
        ("web.localhost", 200),
        ("www.example.com:443", 500),
        ("www.example.com", 204),
        ("WWW.example.com", 404),
        ("idle.localhost", 200),
        ("nobody.localhost", 404),
    ]:
        c.observe(Entry(bare_host(host), status, 0.003, T0 + 1))
    series = c.series()
    assert list(series) == [("web", "web-3")]
    assert series[("web", "web-3")].by_class == {"2xx": 2, "5xx": 1}
    assert c.unrouted == 3
    [sample] = c.close_due(T0 + 100)
    assert (sample.app, sample.release, sample.at, sample.total) == ("web", "web-3", T0, 3)


def test_a_release_switch_mid_bucket_splits_the_bucket_by_release() -> None:
    """Lines before the switch count for the old release, after it for the new, in the same 10 s."""
    web = app("web", "web-1")
    apps = Apps(web)
    c = RequestCounter(apps.targets)
    c.observe(Entry("web.localhost", 200, 0.004, T0 + 2))
    c.observe(Entry("web.localhost", 500, 0.2, T0 + 3))
    apps.apps = [app("web", "web-2")]
    c.hosts_changed()
    c.observe(Entry("web.localhost", 200, 0.03, T0 + 4))
    assert c.close_due(T0 + 10 + CLOSE_GRACE - 0.1) == []  # not closed before its grace ends
    samples = {s.release: s for s in c.close_due(T0 + 10 + CLOSE_GRACE)}
    assert {r: (s.at, s.by_class) for r, s in samples.items()} == {
        "web-1": (T0, {"2xx": 1, "5xx": 1}),
        "web-2": (T0, {"2xx": 1}),
    }
    assert samples["web-1"].buckets[LATENCY_BOUNDS.index(0.005)] == 1
    assert samples["web-1"].buckets[LATENCY_BOUNDS.index(0.25)] == 1
    assert samples["web-2"].buckets[LATENCY_BOUNDS.index(0.05)] == 1
    assert samples["web-1"].sum_seconds == pytest.approx(0.204)
    for s in samples.values():  # what the API will accept
        assert RequestSample.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_a_late_line_reopens_its_closed_bucket_and_wakes_the_sender() -> None:
    """A line for a bucket already sent makes a new sample for it (the API adds them); each
    bucket that opens tells the sender when it closes."""
    woken: list[float] = []
    c = RequestCounter(Apps(app("web", "web-1")).targets, wake=woken.append)
    c.observe(Entry("web.localhost", 200, 0.01, T0 + 9))
    c.observe(Entry("web.localhost", 200, 0.01, T0 + 9.5))
    assert [s.total for s in c.close_due(T0 + 13)] == [2]
    c.observe(Entry("web.localhost", 200, 9.0, T0 + 9.9))  # a slow request, logged late
    assert [(s.at, s.total, s.buckets[-2]) for s in c.close_due(T0 + 20)] == [(T0, 1, 1)]
    assert woken == [T0 + 10 + CLOSE_GRACE] * 2


def test_prometheus_series_and_their_expiry() -> None:
    """Counters by class and a cumulative histogram per (app, release); a superseded release's
    series goes away SERIES_TTL after its last request, the live one stays."""
    apps = Apps(app("web", "web-1"))
    c = RequestCounter(apps.targets)
    registry = CollectorRegistry()
    registry.register(RequestCollector(c, lambda: iter(())))
    for status, d in [(200, 0.001), (200, 0.02), (502, 3.0), (404, 20.0)]:
        c.observe(Entry("web.localhost", status, d, T0))
    text = generate_latest(registry).decode()
    assert 'forge_app_http_requests_total{app="web",code_class="2xx",release="web-1"} 2.0' in text
    assert 'forge_app_http_requests_total{app="web",code_class="5xx",release="web-1"} 1.0' in text
    assert 'forge_app_http_request_duration_seconds_bucket{app="web",le="0.005",release="web-1"} 1.0' in text
    assert 'forge_app_http_request_duration_seconds_bucket{app="web",le="0.025",release="web-1"} 2.0' in text
    assert 'forge_app_http_request_duration_seconds_bucket{app="web",le="10.0",release="web-1"} 3.0' in text
    assert 'forge_app_http_request_duration_seconds_bucket{app="web",le="+Inf",release="web-1"} 4.0' in text
    assert 'forge_app_http_request_duration_seconds_count{app="web",release="web-1"} 4.0' in text
    apps.apps = [app("web", "web-2")]
    c.hosts_changed()
    c.observe(Entry("web.localhost", 200, 0.001, T0 + 5))
    assert c.expire(T0 + SERIES_TTL - 1) == []
    assert c.next_due(T0 + 100) == 0.0  # two buckets are due to close
    assert len(c.close_due(T0 + 100)) == 2
    assert c.next_due(T0 + 100) == pytest.approx(SERIES_TTL - 100)  # the expiry is a timer
    assert c.expire(T0 + SERIES_TTL) == [("web", "web-1")]
    assert c.expire(T0 + 10 * SERIES_TTL) == []  # the live release stays, however idle
    assert 'release="web-1"' not in generate_latest(registry).decode()
    apps.apps = []  # the App is deleted: its last series goes too
    c.hosts_changed()
    assert c.expire(T0 + 10 * SERIES_TTL) == [("web", "web-2")]


@needs_promtool
def test_the_proxys_request_metrics_pass_promtool() -> None:
    """The exposition (app series and the proxy's own counters) passes ``promtool check metrics``."""
    c = RequestCounter(Apps(app("web", "web-1")).targets)
    c.observe(Entry("web.localhost", 503, 0.3, T0))
    c.observe(Entry("nobody.localhost", 404, 0.3, T0))
    with ForgeClient("http://127.0.0.1:9", "t") as client:
        sender = RequestSender(c, client, "p", FakeClock(T0))
        registry = CollectorRegistry()
        registry.register(RequestCollector(c, sender.metrics))
        text = generate_latest(registry).decode()
    assert "forge_proxy_unrouted_requests_total 1.0" in text
    assert_promtool_clean(text)


def test_caddy_logging_keeps_the_access_log_out_of_caddys_own_log() -> None:
    """The access logger goes to UDP only; the default log excludes it (5xx entries are ERRORs)."""
    logs, server = caddy_logging("127.0.0.1:20001")
    assert server == {"default_logger_name": "forge_access"}
    assert logs["default"]["exclude"] == logs["forge_access"]["include"] == ["http.log.access.forge_access"]
    assert logs["forge_access"]["writer"]["address"] == "udp/127.0.0.1:20001"


def test_access_log_socket_reads_datagrams_and_counts_bad_lines() -> None:
    """Whole datagrams in, entries out; a cut line, or one whose counting fails, is counted as
    unreadable and the reading goes on; close ends the reading thread."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reader = AccessLogSocket(f"127.0.0.1:{port}")
    reader.bind()
    got: list[Entry] = []
    bad: list[int] = []
    done = threading.Event()

    def handle(e: Entry) -> None:
        if e.host == "boom.localhost":
            raise RuntimeError("a bug in counting")
        got.append(e)
        if len(got) == 2:
            done.set()

    t = threading.Thread(target=reader.run, args=(handle, lambda: bad.append(1)), daemon=True)
    t.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.sendto(line("a.localhost", 200, 0.1, T0) + b"\n", ("127.0.0.1", port))
        out.sendto(line("a.localhost", 200, 0.1, T0)[:40], ("127.0.0.1", port))
        out.sendto(line("boom.localhost", 200, 0.1, T0), ("127.0.0.1", port))
        out.sendto(line("b.localhost", 500, 0.1, T0) + b"\n", ("127.0.0.1", port))
    assert done.wait(10)
    assert [e.host for e in got] == ["a.localhost", "b.localhost"] and bad == [1, 1]
    assert reader.drops() == 0
    reader.close()
    t.join(5)
    assert not t.is_alive()


# ------------------------------------------------------------------ the sender, against a real server


class Receiver:
    """A small real HTTP server standing in for the API's endpoint: it records each batch,
    answers 503 while ``down``, and acknowledges a batch id once (as the API deduplicates)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.down = False
        self.refuse = False
        self.auth: list[str] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.auth.append(self.headers.get("Authorization", ""))
                if outer.down:
                    return self.reply(503, {"error": "Unavailable", "message": "down"})
                if outer.refuse:
                    return self.reply(400, {"error": "Invalid", "message": "samples[0].at: bad"})
                if body["id"] not in outer.seen:
                    outer.seen.add(body["id"])
                    outer.batches.append(body)
                self.reply(200, {"accepted": len(body["samples"])})

            def reply(self, code: int, obj: dict[str, Any]) -> None:
                raw = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def samples(self) -> list[RequestSample]:
        return [RequestSample.from_json(s) for b in self.batches for s in b["samples"]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_sender_posts_closed_buckets_retries_and_never_counts_twice(receiver: Receiver) -> None:
    """Closed buckets are posted with the proxy's name, an id and its token; while the API is
    down the reconcile raises (the worker backs off) and nothing is lost; after it returns,
    every request is counted exactly once."""
    clock = FakeClock(T0)
    c = RequestCounter(Apps(app("web", "web-1"), app("api", "api-7")).targets)
    with ForgeClient(receiver.url, "proxy-token") as client:
        sender = RequestSender(c, client, "host-abc", clock)
        for i in range(30):
            c.observe(Entry("web.localhost" if i % 3 else "api.localhost", 200 + 100 * (i % 4), 0.01, T0 + i))
        assert sender.reconcile("send") == pytest.approx(10 + CLOSE_GRACE)  # the first bucket is open
        clock.advance(12)
        receiver.down = True
        with pytest.raises(ForgeError):
            sender.reconcile("send")
        clock.advance(20)
        with pytest.raises(ForgeError):
            sender.reconcile("send")
        assert sender.outbox.pending == 6 and receiver.batches == []  # three buckets × two apps
        receiver.down = False
        sender.reconcile("send")
        clock.advance(20)
        sender.reconcile("send")
    assert sender.outbox.pending == 0
    assert {b["proxy"] for b in receiver.batches} == {"host-abc"}
    assert set(receiver.auth) == {"Bearer proxy-token"}
    got: dict[tuple[str, int], int] = {}
    for s in receiver.samples():
        got[(s.app, s.at)] = got.get((s.app, s.at), 0) + s.total
    assert sum(got.values()) == 30
    assert got == {
        ("web", T0): 6,
        ("api", T0): 4,
        ("web", T0 + 10): 7,
        ("api", T0 + 10): 3,
        ("web", T0 + 20): 7,
        ("api", T0 + 20): 3,
    }


def test_a_batch_the_api_refuses_for_good_is_dropped_and_counted(receiver: Receiver) -> None:
    """A 400 is not retried forever (it would block every later batch): dropped and counted."""
    clock = FakeClock(T0)
    c = RequestCounter(Apps(app("web", "web-1")).targets)
    with ForgeClient(receiver.url, "t") as client:
        sender = RequestSender(c, client, "p", clock)
        c.observe(Entry("web.localhost", 200, 0.01, T0))
        clock.advance(15)
        receiver.refuse = True
        sender.reconcile("send")
    assert (sender.outbox.pending, sender.outbox.dropped) == (0, 1)


def test_outbox_batches_are_bounded_and_the_oldest_are_dropped_when_full() -> None:
    """At most MAX_SAMPLES_PER_BATCH samples and MAX_BATCH_BYTES per batch; past the bound the
    oldest batches go, counted; ids never repeat."""
    box = Outbox(max_samples=3 * MAX_SAMPLES_PER_BATCH)
    samples = [
        RequestSample(f"app-{i:05d}", "r", 0, {"2xx": 1}, [1] + [0] * len(LATENCY_BOUNDS))
        for i in range(12_000)
    ]
    box.put(samples)
    sizes, ids = [], []
    while (b := box.first()) is not None:
        sizes.append(len(b[1]))
        ids.append(b[0])
        assert len(json.dumps(b[1], separators=(",", ":"))) <= MAX_BATCH_BYTES
        box.done(b[0])
    assert max(sizes) <= MAX_SAMPLES_PER_BATCH and sum(sizes) == 12_000 and len(set(ids)) == len(ids)
    box.put(samples)
    box.put(samples)  # 24,000 pending > 15,000: the oldest batches go
    assert box.pending <= 3 * MAX_SAMPLES_PER_BATCH
    assert box.dropped == 24_000 - box.pending
    first = box.first()
    assert first is not None and first[1][0]["app"] != "app-00000"  # the oldest went first
