"""The node's data plane with real namespaces, veths, a bridge and nftables (root), plus its
pure parts (resolver choice, configuration parsing, the service map's slots)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.errors import Invalid
from forge.nodeagent.network import NodeNetwork, parse_ports, parse_subnet, resolv_conf
from forge.proxy.nft import Nft, nft_available
from forge.proxy.servicemap import SLOTS, ServiceMap, allocate_ports, choose_service_ip, slot_elements

NEEDS_NET = pytest.mark.skipif(nft_available() is not None, reason=f"needs root and nftables: {nft_available()}")


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(("etc", "resolved", "want_text", "want_loop"), [
    ("nameserver 10.0.0.2\nsearch corp\n", None, "nameserver 10.0.0.2\nsearch corp\n", None),
    ("nameserver 127.0.0.53\noptions edns0\n", "nameserver 9.9.9.9\n", "nameserver 9.9.9.9\n", None),
    ("nameserver 127.0.0.1\n", None, "", "127.0.0.1"),
    ("nameserver ::1\n", None, "", "127.0.0.53"),
    ("nameserver 127.0.0.53\nnameserver 1.1.1.1\n", None, "nameserver 1.1.1.1\n", None),
], ids=["plain", "systemd-resolved", "dnsmasq-on-loopback", "v6-loopback-only", "mixed"])
def test_resolv_conf_never_points_inside_at_the_hosts_loopback(tmp_path: Path, etc: str, resolved: str | None,
                                                              want_text: str, want_loop: str | None) -> None:
    """The namespace's resolvers are the host's non-loopback ones, else systemd-resolved's
    upstreams, else the gateway DNAT-ed to the loopback resolver."""
    (tmp_path / "etc").write_text(etc)
    if resolved is not None:
        (tmp_path / "resolved").write_text(resolved)
    assert resolv_conf(str(tmp_path / "etc"), str(tmp_path / "resolved")) == (want_text, want_loop)


@pytest.mark.parametrize(("text", "want"), [("", ()), ("5432", (5432,)), (" 6379, 5432,5432 ", (5432, 6379))])
def test_parse_ports(text: str, want: tuple[int, ...]) -> None:
    """FORGE_APP_HOST_PORTS: a comma list of TCP ports, sorted and deduplicated."""
    assert parse_ports(text) == want


@pytest.mark.parametrize("text", ["0", "70000", "ssh", "22-25"])
def test_parse_ports_names_the_bad_value(text: str) -> None:
    """A bad port is an error naming the variable and the value."""
    with pytest.raises(Invalid, match=f"FORGE_APP_HOST_PORTS: '{text}'"):
        parse_ports(text)


@pytest.mark.parametrize("text", ["10.0.0.0/8", "10.0.0.1/24", "fd00::/64", "banana", "10.1.0.0/30"])
def test_parse_subnet_refuses(text: str) -> None:
    """Only IPv4 networks from /16 to /28, given by their network address."""
    with pytest.raises(Invalid, match="FORGE_INSTANCE_SUBNET"):
        parse_subnet(text)


def test_slots_split_replicas_evenly() -> None:
    """60 slots: 1-6 replicas get exactly equal shares; no backend, no slot."""
    for n in range(1, 7):
        backends = [f"10.0.0.{i}:80" for i in range(n)]
        values = [e.split(" : ")[1] for e in slot_elements(10001, backends)]
        assert len(values) == SLOTS and {values.count(v) for v in set(values)} == {SLOTS // n}
    assert slot_elements(10001, []) == []


def test_allocate_ports_keeps_held_and_fills_gaps() -> None:
    """Apps holding a port keep it; new ones get the lowest free ports, in order."""
    assert allocate_ports(["a", "b", "c"], {"b": 10000}) == {"a": 10001, "c": 10002}
    assert allocate_ports(["a"], {"a": 10005}) == {}


def test_service_ip_is_stable_per_install_and_configurable(tmp_path: Path) -> None:
    """The same data dir always gets the same service IP; another gets another; a bad value is refused."""
    a, b = choose_service_ip(tmp_path / "a"), choose_service_ip(tmp_path / "b")
    assert a == choose_service_ip(tmp_path / "a") and a != b and a.startswith("198.1")
    assert choose_service_ip(tmp_path, "192.0.2.10") == "192.0.2.10"
    for bad in ("127.0.0.1", "::1", "nope"):
        with pytest.raises(Invalid, match="FORGE_SERVICE_ADDRESS"):
            choose_service_ip(tmp_path, bad)


# --------------------------------------------------------------------------- real kernel


@pytest.fixture
def net(tmp_path: Path) -> Iterator[NodeNetwork]:
    n = NodeNetwork(tmp_path / "node", host_ports=())
    n.setup()
    yield n
    n.teardown()
    assert not n.namespaces()
    assert not Path(f"/sys/class/net/{n.names.bridge}").exists()
    assert not Nft().table_exists("inet", n.names.table)


def serve_in(net: NodeNetwork, name: str, bind: str) -> subprocess.Popen[bytes]:
    code = (f"import http.server as h; s=h.ThreadingHTTPServer(('{bind}', 8000), h.BaseHTTPRequestHandler); "
            "print('up', flush=True); s.serve_forever()")
    p = subprocess.Popen(["nsenter", f"--net={net.netns_path(name)}", sys.executable, "-c", code],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None and p.stdout.readline().strip() == b"up"
    return p


def connects_from(net: NodeNetwork, name: str, host: str, port: int) -> bool:
    code = f"import socket; socket.create_connection(('{host}', {port}), 1.5)"
    return subprocess.run(["nsenter", f"--net={net.netns_path(name)}", sys.executable, "-c", code],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=20).returncode == 0


def connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 1.5).close()
    except OSError:
        return False
    return True


@pytest.fixture
def host_listener() -> Iterator[int]:
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen(16)
    stop = threading.Event()

    def loop() -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                s.accept()[0].close()
            except OSError:
                continue

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield int(s.getsockname()[1])
    stop.set()
    t.join(5)
    s.close()


@NEEDS_NET
def test_apps_answer_on_either_bind_and_cannot_reach_each_other_or_the_host(net: NodeNetwork, host_listener: int) -> None:
    """The host reaches an app bound to 127.0.0.1 and one bound to 0.0.0.0 at their addresses;
    neither reaches the other, nor a listener on every host address."""
    a, b = net.attach("a-1-0"), net.attach("b-1-0")
    assert a != b
    servers = [serve_in(net, "a-1-0", "127.0.0.1"), serve_in(net, "b-1-0", "0.0.0.0")]
    try:
        assert connects(a, 8000) and connects(b, 8000)
        assert connects("127.0.0.1", host_listener)  # the listener is really there
        assert not connects_from(net, "a-1-0", b, 8000)
        assert not connects_from(net, "b-1-0", a, 8000)
        assert not connects_from(net, "a-1-0", net.gateway, host_listener)
        assert not connects_from(net, "a-1-0", "169.254.169.254", 80)
    finally:
        for p in servers:
            p.kill()
            p.wait()


@NEEDS_NET
def test_opened_host_port_is_reachable_at_the_gateway(tmp_path: Path, host_listener: int) -> None:
    """FORGE_APP_HOST_PORTS opens exactly those host ports, at the gateway address."""
    n = NodeNetwork(tmp_path / "open", host_ports=(host_listener,))
    n.setup()
    try:
        n.attach("db-user-1-0")
        assert connects_from(n, "db-user-1-0", n.gateway, host_listener)
        assert not connects_from(n, "db-user-1-0", n.gateway, 22)
    finally:
        n.teardown()


@NEEDS_NET
def test_attach_is_whole_after_a_crash_and_detach_leaves_nothing(net: NodeNetwork) -> None:
    """A half-made namespace (a crash mid-attach) is replaced; the address sticks to the name;
    detach and sweep remove namespace and veth."""
    first = net.attach("x-1-0")
    subprocess.run(["ip", "-n", net.names.netns("x-1-0"), "link", "set", "eth0", "down"], check=True)
    assert net.attach("x-1-0") == first
    assert connects(first, 8000) is False  # nothing listens, but the path is there again:
    p = serve_in(net, "x-1-0", "0.0.0.0")
    try:
        assert connects(first, 8000)
    finally:
        p.kill()
        p.wait()
    veth = net.names.veth(net.names.netns("x-1-0"))
    net.detach("x-1-0")
    assert not net.has("x-1-0") and not Path(f"/sys/class/net/{veth}").exists()
    net.attach("keep-1-0")
    net.attach("orphan-1-0")
    assert net.sweep(keep={"keep-1-0"}) == ["orphan-1-0"]
    assert net.namespaces() == ["keep-1-0"]


@NEEDS_NET
def test_setup_is_idempotent_and_keeps_namespaces(net: NodeNetwork) -> None:
    """An agent restart (setup again) keeps the subnet, the bridge and every namespace."""
    addr = net.attach("stay-1-0")
    again = NodeNetwork(net.data_dir)
    again.setup()
    assert again.subnet == net.subnet and again.namespaces() == ["stay-1-0"]
    assert again.attach("other-1-0") != addr


@NEEDS_NET
def test_service_map_switch_is_atomic_and_repairs_drift(tmp_path: Path) -> None:
    """The kernel map holds exactly what was applied; a flushed map is repaired by verify."""
    s = ServiceMap(tmp_path)
    try:
        assert s.ensure() is True and s.ensure() is False
        assert s.apply({10000: ["10.9.0.1:80", "10.9.0.2:80"], 10001: ["10.9.0.3:80"]}) == [10000, 10001]
        assert s.read() == {10000: ["10.9.0.1:80", "10.9.0.2:80"], 10001: ["10.9.0.3:80"]}
        assert s.apply({10000: ["10.9.0.4:80"], 10001: ["10.9.0.3:80"]}) == [10000]
        assert s.apply({10000: ["10.9.0.4:80"]}) == [10001]
        assert s.read() == {10000: ["10.9.0.4:80"]}
        subprocess.run(["nft", "flush", "map", "ip", s.table, "backends"], check=True)
        assert s.verify({10000: ["10.9.0.4:80"]}) is True
        assert s.read() == {10000: ["10.9.0.4:80"]}
        subprocess.run(["nft", "flush", "map", "ip", s.table, "backends"], check=True)
        assert s.apply({10000: ["10.9.0.5:80"]}) == [10000]  # out of step: re-read, then applied
        assert s.read() == {10000: ["10.9.0.5:80"]}
    finally:
        s.teardown()
    assert not Nft().table_exists("ip", s.table)


@NEEDS_NET
def test_gateway_mac_never_changes_when_instances_come_and_go(net: NodeNetwork) -> None:
    """The bridge keeps one MAC whatever veths join or leave (apps' ARP entries for the gateway stay right)."""
    mac = Path(f"/sys/class/net/{net.names.bridge}/address").read_text().strip()
    for i in range(6):
        net.attach(f"churn-{i}-0")
        assert Path(f"/sys/class/net/{net.names.bridge}/address").read_text().strip() == mac
    for i in range(6):
        net.detach(f"churn-{i}-0")
        assert Path(f"/sys/class/net/{net.names.bridge}/address").read_text().strip() == mac
