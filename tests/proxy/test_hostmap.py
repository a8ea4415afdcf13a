"""The host map on disk and the proxy's record cache: the pure-ish parts, on a real filesystem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forge.errors import Invalid
from forge.models import App, AppSpec, Instance, InstanceSpec, Node, ObjectMeta
from forge.proxy.hostmap import HostMap, pack
from forge.proxy.records import Records


def listing(root: Path) -> dict[str, list[str]]:
    return {h: sorted(os.listdir(root / h)) for h in sorted(os.listdir(root))}


def test_apply_writes_one_entry_per_host_and_removes_the_rest(tmp_path: Path) -> None:
    """Each host gets exactly one file named after its packed dials; hosts without dials go."""
    hm = HostMap(tmp_path / "hosts")
    assert hm.apply({"a.localhost": ["10.0.0.2:1", "10.0.0.1:1"], "b.localhost": ["10.0.0.3:1"], "c.localhost": []}) \
        == ["a.localhost", "b.localhost"]
    assert listing(hm.root) == {"a.localhost": ["10.0.0.1:1 10.0.0.2:1"], "b.localhost": ["10.0.0.3:1"]}
    assert hm.apply({"a.localhost": ["10.0.0.9:1"]}) == ["a.localhost", "b.localhost"]
    assert listing(hm.root) == {"a.localhost": ["10.0.0.9:1"]}
    assert hm.apply({"a.localhost": ["10.0.0.9:1"]}) == []  # idempotent: nothing touched


def test_a_switch_is_a_rename_of_the_same_file(tmp_path: Path) -> None:
    """A host's new dials replace the old entry by rename(2): the inode moves, never an empty dir."""
    hm = HostMap(tmp_path / "hosts")
    hm.apply({"a.localhost": ["10.0.0.1:1"]})
    inode = os.stat(hm.root / "a.localhost" / "10.0.0.1:1").st_ino
    hm.apply({"a.localhost": ["10.0.0.2:1"]})
    assert os.stat(hm.root / "a.localhost" / "10.0.0.2:1").st_ino == inode


def test_verify_repairs_what_someone_changed_behind_its_back(tmp_path: Path) -> None:
    """Strays, a missing host, a file where a directory belongs: the verifying pass repairs all."""
    hm = HostMap(tmp_path / "hosts")
    want = {"a.localhost": ["10.0.0.1:1"], "b.localhost": ["10.0.0.2:1"]}
    hm.apply(want)
    (hm.root / "a.localhost" / "10.9.9.9:9").touch()  # a second entry: Caddy might take it
    os.rename(hm.root / "b.localhost", hm.root / "x.localhost")
    (hm.root / "junk").write_text("")
    assert hm.apply(want) == []  # what was applied is remembered: no read of the disk
    assert hm.apply(want, verify=True) == ["a.localhost", "b.localhost", "junk", "x.localhost"]
    assert listing(hm.root) == {"a.localhost": ["10.0.0.1:1"], "b.localhost": ["10.0.0.2:1"]}


@pytest.mark.parametrize("host", ["", "..", ".", "a/b", "a\0b"], ids=["empty", "dotdot", "dot", "slash", "nul"])
def test_a_host_is_never_a_path_out(tmp_path: Path, host: str) -> None:
    """A host that could name a path outside the map is refused, whatever the records say."""
    with pytest.raises(Invalid):
        HostMap(tmp_path / "hosts").apply({host: ["10.0.0.1:1"]})


def test_pack_keeps_the_first_twelve_sorted() -> None:
    """The entry holds at most the slot count of dials, sorted (the static slot map's input)."""
    dials = [f"10.0.0.{i}:1" for i in range(20, 5, -1)]
    assert pack(dials).split() == sorted(dials)[:12]


def _app(name: str, rv: int) -> App:
    return App(metadata=ObjectMeta(name=name, resource_version=rv), spec=AppSpec(repo=f"acme/{name}"))


def _inst(name: str, app: str, rv: int, node: str = "n1") -> Instance:
    return Instance(metadata=ObjectMeta(name=name, resource_version=rv),
                    spec=InstanceSpec(app=app, deployment=f"{app}-1", node=node, repo="acme/x", commit="0" * 40))


def test_records_keep_the_newest_version_and_relist_reports_differences() -> None:
    """An older version never replaces a newer one; a relist yields exactly what changed, and
    the by-App and by-node indexes follow moves and deletions."""
    r = Records()
    assert r.put(_app("a", 5)) == (None, True)
    assert r.put(_app("a", 4))[1] is False
    assert r.get(App, "a").metadata.resource_version == 5  # type: ignore[union-attr]
    r.put(_inst("a-1-0", "a", 6))
    r.put(_inst("b-1-0", "b", 7, node="n2"))
    changes = r.replace(Instance, [_inst("a-1-0", "a", 6), _inst("b-1-0", "b", 8, node="n1")])
    assert [(o and o.metadata.resource_version, n and n.metadata.resource_version) for o, n in changes] == [(7, 8)]
    assert sorted(i.metadata.name for i in r.instances_on("n1")) == ["a-1-0", "b-1-0"]
    r.delete(Instance, "a-1-0")
    assert r.instances_of("a") == [] and [i.metadata.name for i in r.instances_of("b")] == ["b-1-0"]
    assert not r.is_synced()
    r.replace(App, [])
    r.replace(Node, [])
    assert r.is_synced()


def test_documented_caddy_config_is_current() -> None:
    """manifests/caddy/base.json is exactly the static config a proxy keeps with default settings
    (data dir /var/lib/forge, kernel mode: admin on a unix socket, no upstream keep-alive)."""
    import json

    from forge.config import Config
    from forge.proxy.caddy import forge_config

    path = Path(__file__).resolve().parents[2] / "manifests" / "caddy" / "base.json"
    assert json.loads(path.read_text()) == forge_config(Config(data_dir=Path("/var/lib/forge")), kernel=True)
