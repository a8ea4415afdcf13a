"""Several machines on one: a network namespace per "host", joined by a bridge of the test's own.

Layout (every name derived from the test's temp root, so concurrent runs never meet)::

    root netns (the test process: the "internet" the client stands on)
      bridge fthHHHHHH  10.2xx.y.1/24
        ├── veth ─ netns fhHHHHHH-cp   eth0 .2   forge up --no-agent (API, controllers, Caddy)
        ├── veth ─ netns fhHHHHHH-w1   eth0 .3   forge agent (its own data dir, node name, subnet)
        └── …

Every process of a host runs under ``nsenter --net=HOST`` (the mount namespace stays the
machine's, so cgroups, /run/netns and loop mounts are shared as on separate machines they
would be separate); the agents reach the API at the control plane's address over the bridge,
the control plane routes each worker's instance subnet via the worker's address (the router's
``node-routes``), and the client in the root namespace reaches Caddy at the control plane's
address. ``kill`` is a machine dying: SIGKILL of every process in the host's network namespace
and in the Instance namespaces its agent made, then its link cut.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from forge.nodeagent.network import NetNames
from forge.proxy.nft import install_hash, ip, ipv4_routes
from tests.e2e.harness import ADMIN_TOKEN, WEBHOOK_SECRET, wait_for

POOL = ipaddress.ip_network("10.216.0.0/16")  # the hosts' network; instance subnets live elsewhere
API_PORT, HTTP_PORT = 8080, 8000  # inside the control plane's own namespace: nothing else there


@dataclass
class Host:
    name: str
    netns: str
    address: str
    veth: str
    data: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    subnet: str = ""  # workers: their instance subnet ("": the agent picks one)

    @property
    def node_names(self) -> NetNames:
        return NetNames(install_hash(self.data.resolve()))


@dataclass
class Cluster:
    root: Path
    workers: int = 3
    control_planes: int = 1  # cp, cp2, …: each its own forge up --no-agent (API, controllers, Caddy, proxy)
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        h = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:6]
        self.tag = h
        self.bridge = f"fth{h}"
        self.net = _free_net(int(h, 16))
        addrs = list(self.net.hosts())
        self.gateway = str(addrs[0])
        self.cps = ["cp"] + [f"cp{i}" for i in range(2, self.control_planes + 1)]
        names = self.cps + [f"w{i}" for i in range(1, self.workers + 1)]
        for i, name in enumerate(names):
            ns = f"fh{h}-{name}"
            self.hosts[name] = Host(name, ns, str(addrs[i + 1]), "fx" + hashlib.sha256(ns.encode()).hexdigest()[:11],
                                    self.root / name / "data")
        # Instance subnets: each worker's own, routed by the control plane (from 10.213/16, the
        # agents' pool; inside the worker namespaces nothing else uses it).
        for i, name in enumerate(names[len(self.cps):]):
            self.hosts[name].subnet = f"10.213.{(int(h, 16) + i * 37) % 250 + 1}.0/24"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
        self.env.update(FORGE_ADMIN_TOKEN=ADMIN_TOKEN, FORGE_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
                        FORGE_GIT_URL_TEMPLATE=f"file://{self.root}/remotes/{{full_name}}.git",
                        PYTHONUNBUFFERED="1", FORGE_MODE="dev")

    # ------------------------------------------------------------------ addresses
    @property
    def cp(self) -> Host:
        return self.hosts["cp"]

    @property
    def api(self) -> str:
        return f"http://{self.cp.address}:{API_PORT}"

    @property
    def http(self) -> str:
        return f"http://{self.cp.address}:{HTTP_PORT}"

    def http_of(self, name: str) -> str:
        """Where a control-plane host's Caddy serves apps."""
        return f"http://{self.hosts[name].address}:{HTTP_PORT}"

    def api_of(self, name: str) -> str:
        return f"http://{self.hosts[name].address}:{API_PORT}"

    def node(self, worker: str) -> str:
        return f"{worker}-{self.tag}"

    @property
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)

    # ------------------------------------------------------------------ the network
    def build(self) -> None:
        ip(f"link add {self.bridge} type bridge", f"addr add {self.gateway}/{self.net.prefixlen} dev {self.bridge}",
           f"link set {self.bridge} up")
        for host in self.hosts.values():
            ip(f"netns add {host.netns}",
               f"link add {host.veth} type veth peer name eth0 netns {host.netns}",
               f"link set {host.veth} master {self.bridge}", f"link set {host.veth} up")
            ip(f"addr add {host.address}/{self.net.prefixlen} dev eth0", "link set eth0 up", "link set lo up",
               f"route add default via {self.gateway}", netns=host.netns)

    def cut(self, name: str, up: bool = False) -> None:
        """The host's cable: out (``up=False``) or back in."""
        ip(f"link set {self.hosts[name].veth} {'up' if up else 'down'}")

    # ------------------------------------------------------------------ processes
    def _spawn(self, host: Host, argv: list[str], env: dict[str, str]) -> None:
        host.data.mkdir(parents=True, exist_ok=True)
        host.log = host.data.parent / f"{host.name}-{int(time.time() * 1000)}.log"
        with host.log.open("wb") as out:
            host.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{host.netns}", "--", *argv], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=str(host.data.parent))

    def start_control_plane(self, name: str = "cp", **env: str) -> None:
        cp = self.hosts[name]
        self._spawn(cp, [sys.executable, "-m", "forge", "up", "--no-agent", "--data-dir", str(cp.data),
                         "--api-listen", f"{cp.address}:{API_PORT}", "--http-listen", f"{cp.address}:{HTTP_PORT}"],
                    dict(self.env, **env))
        assert cp.log is not None and cp.proc is not None
        wait_for(lambda: cp.proc.poll() is not None or "Forge is up" in cp.log.read_text(errors="replace"),
                 120, "the control plane to be up")
        assert cp.proc.poll() is None, cp.log.read_text(errors="replace")[-4000:]

    def start_agent(self, name: str) -> None:
        host = self.hosts[name]
        token_file = host.data.parent / "node-token"
        if not token_file.exists():
            with self.client as c:
                r = c.post(f"/api/v1/nodes/{self.node(name)}/token", json={})
                r.raise_for_status()
                token_file.parent.mkdir(parents=True, exist_ok=True)
                token_file.write_text(r.json()["token"])
        env = dict(self.env, FORGE_NODE_TOKEN=token_file.read_text().strip())
        started = time.time()
        self._spawn(host, [sys.executable, "-m", "forge", "agent", "--api", self.api, "--name", self.node(name),
                           "--data-dir", str(host.data), "--address", host.address,
                           *(["--instance-subnet", host.subnet] if host.subnet else []),
                           # every control-plane host's proxy dials the Instances
                           "--proxy-from", ",".join(self.hosts[n].address for n in self.cps),
                           "--metrics-listen", "127.0.0.1:9108"], env)
        wait_for(lambda: self.node_ready_since(name, started), 60, f"node {name} to be Ready")

    def node_ready_since(self, name: str, since: float) -> bool:
        host = self.hosts[name]
        assert host.proc is not None
        assert host.proc.poll() is None, (host.log.read_text(errors="replace")[-3000:] if host.log else "")
        with self.client as c:
            r = c.get(f"/api/v1/nodes/{self.node(name)}")
        if r.status_code != 200:
            return False
        st = r.json().get("status", {})
        from forge.clock import parse_iso

        beat = st.get("lastHeartbeatTime")
        return bool(beat) and parse_iso(beat) >= since - 1 and any(
            c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", []))

    def kill(self, name: str) -> int:
        """SIGKILL every process of the host (its agent, its apps and builds): a dead machine."""
        host = self.hosts[name]
        inodes = {os.stat(f"/run/netns/{host.netns}").st_ino}
        prefix = host.node_names.netns_prefix
        for entry in os.listdir("/run/netns"):
            if entry.startswith(prefix):
                try:
                    inodes.add(os.stat(f"/run/netns/{entry}").st_ino)
                except FileNotFoundError:
                    pass
        killed = 0
        for _ in range(20):  # bounded: a fork racing the first pass is caught by the next
            victims = [pid for pid in _pids() if _netns_inode(pid) in inodes]
            if not victims:
                break
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        if host.proc is not None:
            host.proc.wait(timeout=10)
        return killed

    def running_in(self, name: str) -> list[str]:
        """The agent-made network namespaces of a host that still hold a process."""
        host = self.hosts[name]
        prefix = host.node_names.netns_prefix
        by_inode = {}
        for entry in os.listdir("/run/netns"):
            if entry.startswith(prefix):
                try:
                    by_inode[os.stat(f"/run/netns/{entry}").st_ino] = entry[len(prefix):]
                except FileNotFoundError:
                    pass
        return sorted({by_inode[i] for pid in _pids() if (i := _netns_inode(pid)) in by_inode})

    # ------------------------------------------------------------------ teardown
    def stop(self) -> None:
        from forge.nodeagent.teardown import unmount_release_disks

        for cp in (self.hosts[n] for n in self.cps):
            if cp.proc is not None and cp.proc.poll() is None:
                cp.proc.send_signal(signal.SIGTERM)
        for cp in (self.hosts[n] for n in self.cps):
            if cp.proc is not None:
                try:
                    cp.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(cp.proc.pid, signal.SIGKILL)
        for name, host in self.hosts.items():
            if os.path.exists(f"/run/netns/{host.netns}"):
                self.kill(name)
            if name not in self.cps and host.data.exists():
                unmount_release_disks(host.data)
                subprocess.run(["nsenter", f"--net=/run/netns/{host.netns}", "--", sys.executable, "-c",
                                "import sys; from pathlib import Path; from forge.nodeagent.teardown import remove_node_network;"
                                " remove_node_network(Path(sys.argv[1]))", str(host.data)],
                               check=False, timeout=60, capture_output=True,
                               cwd=str(Path(__file__).resolve().parents[2]))
                _remove_cgroups(host)
        for host in self.hosts.values():
            ip(f"netns del {host.netns}", check=False)
        ip(f"link del {self.bridge}", check=False)

    def logs(self) -> str:
        out = []
        for host in self.hosts.values():
            for log in sorted(host.data.parent.glob(f"{host.name}-*.log")):
                out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)


def _free_net(seed: int) -> ipaddress.IPv4Network:
    taken = [r.net for r in ipv4_routes("table", "all")]
    pool = list(POOL.subnets(new_prefix=24))
    for i in range(len(pool)):
        net = pool[(seed + i) % len(pool)]
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError(f"no free /24 in {POOL} for the test hosts")


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _remove_cgroups(host: Host) -> None:
    """The agent's cgroup subtree, ``forge/NODE.HASH`` under each hierarchy (its processes are gone)."""
    suffix = "." + install_hash(host.data.resolve())
    for base in Path("/sys/fs/cgroup").iterdir():
        root = base / "forge"
        if not root.is_dir():
            continue
        for sub in root.iterdir():
            if sub.name.endswith(suffix):
                for d in sorted(sub.rglob("*"), key=lambda p: -len(p.parts)):
                    if d.is_dir():
                        try:
                            d.rmdir()
                        except OSError:
                            pass
                try:
                    sub.rmdir()
                except OSError:
                    pass
