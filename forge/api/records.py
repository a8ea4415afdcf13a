"""CRUD for every record kind: collection (list, watch, create), item (get, replace,
merge-patch, delete) and the ``/status`` subresource.

Decisions (docs/CONTRACTS.md "HTTP API"):
- create ignores client-supplied ``status`` and server-owned metadata (uid, resourceVersion,
  generation, timestamps); the store assigns them.
- PUT replaces spec/labels/ownerRef and needs ``metadata.resourceVersion`` (missing → 400
  Invalid naming the field, stale → 409); the body's ``status`` is ignored (use ``/status``).
- PATCH is RFC 7386 merge-patch; a ``metadata.resourceVersion`` in the patch is a
  precondition, otherwise the server retries a lost race itself.
- ``/status`` PUT/PATCH write only status (``store.update_status``).
- A list takes ``limit`` and ``continue`` (``forge.api.paging``): Events newest first, other
  kinds by name.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import falcon

from forge.api import auth, paging
from forge.api.body import merge_patch, q_bool, q_int, read_object, send
from forge.api.context import ApiContext, body_resource_version, check_envelope, validate
from forge.api.sealing import redact
from forge.api.watch import start_watch
from forge.errors import BadRequest, Conflict, Invalid, SubnetTaken
from forge.models import (
    API_VERSION,
    LABEL_APP,
    LABEL_NODE,
    App,
    Deployment,
    Instance,
    Node,
    ObjectMeta,
    Resource,
    Secret,
    SecretSpec,
)
from forge.proxy.routing import app_hosts
from forge.store.base import parse_selector
from forge.subnets import check_subnet, host_networks

PATCH_RETRIES = 3


def render(obj: Resource) -> dict[str, Any]:
    return redact(obj.KIND, obj.dump())


class _Base:
    def __init__(self, ctx: ApiContext, cls: type[Resource]) -> None:
        self.ctx, self.cls, self.kind = ctx, cls, cls.KIND

    def _authorize(self, p: auth.Principal, verb: str, name: str | None) -> None:
        """Decide what can be decided from the URL alone (Instance reads need the record)."""
        if p.admin:
            return
        node = p.node or ""
        if self.kind == "Node" and verb in ("create", "get", "put", "patch", "status") and name == node:
            return
        if self.kind == "Lease" and verb in ("create", "get", "put") and name == auth.node_lease_name(node):
            return
        if self.kind == "Instance" and verb in ("list", "get", "status"):
            return
        raise auth.forbid(p, f"{verb} {self.kind} {name or ''}".rstrip())

    def _load(self, req: falcon.Request, verb: str, name: str) -> Resource:
        p = auth.principal(req)
        self._authorize(p, verb, name)
        stored = self.ctx.store.get(self.kind, name)
        if not p.admin and self.kind == "Instance" and not auth.instance_on_node(stored, p.node or ""):
            raise auth.forbid(p, f"{verb} Instance {name} (it is not bound to this node)")
        return stored

    # -- write-only values ---------------------------------------------------------------
    def _check_not_deleting(self, obj: Resource) -> None:
        """A deleted App's name is free again once its Instances are gone: its nodes delete its
        releases, storage and uid before they report the last one stopped, so a new App of that
        name can never inherit them (nor adopt the old one's Deployments)."""
        if not isinstance(obj, App):
            return
        left = [
            i.metadata.name
            for i in self.ctx.store.list(Instance, {LABEL_APP: obj.name})[0]
            if getattr(i.spec, "app", None) == obj.name
        ]
        left += [
            d.metadata.name
            for d in self.ctx.store.list(Deployment, {LABEL_APP: obj.name})[0]
            if getattr(d.spec, "app", None) == obj.name
        ]
        if left:
            raise Conflict(
                f"app {obj.name} is still being deleted ({', '.join(sorted(left)[:5])} left); "
                "create it again once they are gone",
                [{"path": "metadata.name", "message": "an app of this name is still being deleted"}],
            )

    def _check_hosts(self, obj: Resource) -> None:
        """A host belongs to one App: ``NAME.DOMAIN`` and every custom domain. A claim of a host
        another App answers on is refused (409) naming that App."""
        if not isinstance(obj, App):
            return
        domain = self.ctx.config.domain
        mine = {h.lower().rstrip(".") for h in app_hosts(obj, domain)}
        for other in self.ctx.store.list(App)[0]:
            if not isinstance(other, App) or other.name == obj.name:
                continue
            taken = mine & {h.lower().rstrip(".") for h in app_hosts(other, domain)}
            if taken:
                host = sorted(taken)[0]
                path = "metadata.name" if host == f"{obj.name}.{domain}".lower() else "spec.domains"
                raise Conflict(
                    f"{host} already belongs to app {other.name}; a host is served by one app only",
                    [{"path": path, "message": f"{host} belongs to app {other.name}"}],
                )

    def _seal_full(self, obj: Resource, body: dict[str, Any], stored: Resource | None) -> str | None:
        """Seal plaintext from a create/PUT body; keep stored values the body left out.

        Returns the digest of a Secret's new plaintext values (None when they were kept)."""
        spec = body["spec"] if isinstance(body.get("spec"), dict) else {}
        if self.kind == "Secret":
            if "data" in spec or stored is None:
                digest = self.ctx.sealer.digest(obj.spec.data)
                obj.spec.data = self.ctx.sealer.seal_values("Secret", obj.name, obj.spec.data)
                return digest
            obj.spec.data = dict(stored.spec.data)
        elif self.kind == "RepoCredential":
            if obj.spec.token:
                obj.spec.token = self.ctx.sealer.seal_token(obj.name, obj.spec.token)
            elif stored is not None:
                obj.spec.token = stored.spec.token
        return None

    def _sync_secret_status(self, written: Resource, digest: str | None) -> Resource:
        """Secret.status.keys = sorted key names and dataDigest, written after every data change.

        (The store writes spec and status separately; until this lands, controllers see the
        old digest and simply act one write later.)"""
        if self.kind != "Secret":
            return written
        obj = written
        for _ in range(PATCH_RETRIES):
            obj.status.keys = sorted(obj.spec.data)
            obj.status.data_digest = digest
            obj.status.updated_time = self.ctx.clock.now_iso()
            try:
                return self.ctx.store.update_status(obj)
            except Conflict:
                obj = self.ctx.store.get(Secret, written.name)
        raise Conflict(f"Secret {written.name} keeps changing; its status.keys may be stale, retry")


class CollectionResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        p = auth.principal(req)
        self._authorize(p, "list", None)
        selector = parse_selector(req.get_param("labelSelector"))
        if not p.admin:
            if selector.get(LABEL_NODE, p.node) != p.node:
                raise auth.forbid(p, f"list Instances of node {selector[LABEL_NODE]!r}")
            selector[LABEL_NODE] = p.node or ""
        if q_bool(req, "watch"):
            rv = q_int(req, "resourceVersion", None, 0, 2**62)
            timeout = q_int(
                req, "timeoutSeconds", self.ctx.default_watch_seconds, 1, self.ctx.max_watch_seconds
            )
            start_watch(
                self.ctx, resp, self.kind, selector, rv, self.ctx.stream_seconds(float(timeout or 1)), render
            )
            return
        limit = q_int(req, "limit", None, 1, paging.MAX_LIMIT)
        items, rev = self.ctx.store.list(self.kind, selector or None)
        shown, more = paging.page(self.kind, items, limit, req.get_param("continue") or None)
        send(
            resp,
            {
                "apiVersion": API_VERSION,
                "kind": f"{self.kind}List",
                "metadata": {"resourceVersion": rev, **more},
                "items": [render(o) for o in shown],
            },
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_object(req)
        check_envelope(body, self.cls)
        obj = validate(self.cls, body)
        self._authorize(auth.principal(req), "create", obj.name)
        # Server-owned fields are the store's to set; status is the controllers' to write.
        fresh = obj.model_copy(
            update={
                "metadata": ObjectMeta(
                    name=obj.name, labels=obj.metadata.labels, owner_ref=obj.metadata.owner_ref
                ),
                "status": type(obj.status)(),
            }
        )
        self._check_hosts(fresh)
        self._check_not_deleting(fresh)
        digest = self._seal_full(fresh, body, None)
        if self.kind == "Secret":  # created with its status in the same write
            fresh.status.keys = sorted(fresh.spec.data)
            fresh.status.updated_time = self.ctx.clock.now_iso()
            fresh.status.data_digest = digest
        created = self.ctx.store.create(fresh)
        resp.set_header("Location", f"/api/v1/{self.cls.PLURAL}/{created.name}")
        send(resp, render(created), 201)


class ItemResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        send(resp, render(self._load(req, "get", name)))

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        body = read_object(req)
        check_envelope(body, self.cls, name)
        self._authorize(auth.principal(req), "put", name)
        rv = body_resource_version(body)
        obj = validate(self.cls, body)
        if rv is None:
            raise Invalid(
                "metadata.resourceVersion is required on PUT (read the record, change it, write it back)",
                [{"path": "metadata.resourceVersion", "message": "field required"}],
            )
        stored = self.ctx.store.get(self.kind, name) if self.kind in ("Secret", "RepoCredential") else None
        self._check_hosts(obj)
        digest = self._seal_full(obj, body, stored)
        written = self.ctx.store.update(obj)
        if self.kind == "Secret" and stored is not None and written.spec.data != stored.spec.data:
            written = self._sync_secret_status(written, digest)
        send(resp, render(written))

    def on_patch(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        patch = read_object(req)
        check_envelope(patch, self.cls, name)
        want_rv = body_resource_version(patch)
        spec_patch = patch.get("spec")
        data_patch: Any = None
        if self.kind == "Secret" and isinstance(spec_patch, dict) and "data" in spec_patch:
            data_patch = spec_patch["data"]
            patch = {**patch, "spec": {k: v for k, v in spec_patch.items() if k != "data"}}
            if data_patch is not None and not isinstance(data_patch, dict):
                raise BadRequest(
                    "spec.data must be an object", [{"path": "spec.data", "message": "must be an object"}]
                )
        for attempt in range(PATCH_RETRIES):
            stored = self._load(req, "patch", name)
            doc = merge_patch(stored.dump(), patch)
            doc.setdefault("metadata", {})["resourceVersion"] = want_rv or stored.metadata.resource_version
            obj = validate(self.cls, doc)
            self._check_hosts(obj)
            data_changed, digest = self._apply_sealed_patch(obj, stored, patch, data_patch)
            try:
                written = self.ctx.store.update(obj)
            except Conflict:
                if want_rv or attempt == PATCH_RETRIES - 1:
                    raise
                continue
            if data_changed:
                written = self._sync_secret_status(written, digest)
            send(resp, render(written))
            return

    def _apply_sealed_patch(
        self, obj: Resource, stored: Resource, patch: dict[str, Any], data_patch: Any
    ) -> tuple[bool, str | None]:
        """Seal a patch's plaintext; (whether Secret data changed, the new values' digest)."""
        if self.kind == "RepoCredential":
            spec = patch["spec"] if isinstance(patch.get("spec"), dict) else {}
            if spec.get("token"):
                obj.spec.token = self.ctx.sealer.seal_token(obj.name, obj.spec.token)
            return False, None
        if self.kind != "Secret" or data_patch is None:
            return False, None
        for key, value in data_patch.items():
            if value is not None and not isinstance(value, str):
                raise BadRequest(
                    f"spec.data.{key} must be a string or null",
                    [{"path": f"spec.data.{key}", "message": "must be a string or null"}],
                )
        adds = {k: v for k, v in data_patch.items() if v is not None}
        validate_data(adds)
        kept = {k: v for k, v in stored.spec.data.items() if k not in data_patch}
        digest = self.ctx.sealer.open_digest(obj.name, kept, adds)
        obj.spec.data = {**kept, **self.ctx.sealer.seal_values("Secret", obj.name, adds)}
        return True, digest

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._authorize(auth.principal(req), "delete", name)
        rv = q_int(req, "resourceVersion", None, 0, 2**62)
        send(resp, render(self.ctx.store.delete(self.kind, name, rv or None)))


def validate_data(data: dict[str, str]) -> None:
    try:
        SecretSpec(app="x", data=data)
    except ValueError as exc:
        raise Invalid(
            f"invalid Secret: spec.data: {str(exc).splitlines()[-1].strip()}",
            [{"path": "spec.data", "message": "invalid key name"}],
        ) from None


class StatusResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        send(resp, render(self._load(req, "status", name)))

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        body = read_object(req)
        check_envelope(body, self.cls, name)
        rv = body_resource_version(body)
        if rv is None:
            raise Invalid(
                "metadata.resourceVersion is required on PUT",
                [{"path": "metadata.resourceVersion", "message": "field required"}],
            )
        stored = self._load(req, "status", name)
        base = stored.dump()
        base.pop("status", None)
        doc = {**base, **body, "metadata": {**base["metadata"], "resourceVersion": rv}}
        obj = validate(self.cls, doc)
        self._check_subnet(stored, obj)
        stored.status = obj.status
        stored.metadata.resource_version = rv
        send(resp, render(self.ctx.store.update_status(stored)))

    def _check_subnet(self, stored: Resource, obj: Resource) -> None:
        """A Node's ``instanceSubnet`` must be one the proxy may route (``forge.subnets``: inside
        the instance pool, a sane size, clear of special ranges and of this host's own networks)
        and must not overlap another node's: the proxy routes each subnet to one node. (Two
        agents registering at the same instant can still both pass the overlap check; the router
        then routes the older node's and names the clash in a NodeRouteFailed Event.)"""
        if not isinstance(obj, Node) or not isinstance(stored, Node) or not obj.status.instance_subnet:
            return
        if obj.status.instance_subnet == stored.status.instance_subnet:
            return
        nodes = self.ctx.store.list(Node)[0]
        routed = [(n.status.instance_subnet, n.spec.address or "") for n in nodes if n.status.instance_subnet]
        mine = check_subnet(obj.status.instance_subnet, self.ctx.config.pool, host_networks(routed))
        for other in nodes:
            if other.metadata.name == obj.metadata.name or not other.status.instance_subnet:
                continue
            try:
                theirs = ipaddress.ip_network(other.status.instance_subnet, strict=False)
            except ValueError:
                continue
            if mine.overlaps(theirs):
                raise SubnetTaken(
                    f"instanceSubnet {mine} overlaps node {other.metadata.name}'s ({theirs}); "
                    "each node needs its own (FORGE_INSTANCE_SUBNET)"
                )

    def on_patch(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        patch = read_object(req)
        check_envelope(patch, self.cls, name)
        want_rv = body_resource_version(patch)
        for attempt in range(PATCH_RETRIES):
            stored = self._load(req, "status", name)
            doc = merge_patch(stored.dump(), patch)
            obj = validate(self.cls, doc)
            self._check_subnet(stored, obj)
            stored.status = obj.status
            stored.metadata.resource_version = want_rv or stored.metadata.resource_version
            try:
                written = self.ctx.store.update_status(stored)
            except Conflict:
                if want_rv or attempt == PATCH_RETRIES - 1:
                    raise
                continue
            send(resp, render(written))
            return
