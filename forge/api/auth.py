"""Who is calling: the admin (Bearer ``FORGE_ADMIN_TOKEN``) or a node agent (node token).

Node tokens look like ``forge-node.NODENAME.SECRET``; only their SHA-256 lives in the store,
in ``NodeToken/NODENAME``. A node reaches only its own records (docs/CONTRACTS.md):

- its Node (create, get, put, patch, and the status subresource),
- its Lease ``node.NODENAME`` (create, get, put),
- Instances labelled ``forge.dev/node=NODENAME`` (list/watch with that selector forced, get,
  the status subresource, ``/secrets``, ``/gitcredential``, ``/logs`` and reading ``/stdin``),
- the usage of those Instances (``POST /api/v1/nodes/NODENAME/usage``).

Every other route answers 403 to a node token. An unset or empty admin token authenticates
nobody: every authenticated route answers 401 (the server logs why once, at startup).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets as _secrets
from dataclasses import dataclass
from typing import Any

import falcon

from forge.config import Config
from forge.errors import AlreadyExists, Conflict, Forbidden, NotFound, Unauthorized
from forge.models import LABEL_NODE, NodeToken, NodeTokenSpec, ObjectMeta, Resource
from forge.store.base import Store

log = logging.getLogger(__name__)

NODE_TOKEN_PREFIX = "forge-node."


@dataclass(frozen=True)
class Principal:
    admin: bool
    node: str | None = None

    def __str__(self) -> str:
        return "admin" if self.admin else f"node {self.node}"


ADMIN = Principal(admin=True)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def split_node_token(token: str) -> str | None:
    """The node name in ``forge-node.NAME.SECRET`` (names may hold dots, secrets never do)."""
    if not token.startswith(NODE_TOKEN_PREFIX):
        return None
    name, sep, secret = token[len(NODE_TOKEN_PREFIX) :].rpartition(".")
    return name if sep and name and secret else None


def mint_node_token(store: Store, node: str) -> str:
    """Create or replace ``NodeToken/node``; the plaintext is returned once and never stored."""
    token = f"{NODE_TOKEN_PREFIX}{node}.{_secrets.token_urlsafe(32)}"
    record = NodeToken(metadata=ObjectMeta(name=node), spec=NodeTokenSpec(token_sha256=token_digest(token)))
    for _ in range(3):
        try:
            cur = store.get(NodeToken, node)
        except NotFound:
            try:
                store.create(record)
                return token
            except AlreadyExists:
                continue
        record.metadata.resource_version = cur.metadata.resource_version
        try:
            store.update(record)
            return token
        except (Conflict, NotFound):
            continue
    raise Conflict(f"node token for {node!r} is being changed concurrently; try again")


class Authenticator:
    def __init__(self, config: Config, store: Store) -> None:
        self._admin = config.admin_token.encode("utf-8")
        self._store = store
        if not self._admin:
            log.warning(
                "FORGE_ADMIN_TOKEN is unset or empty: every authenticated API route will answer "
                "401 until the server is restarted with a token"
            )

    def authenticate(self, header: str | None) -> Principal:
        if not self._admin:
            raise Unauthorized("the server has no admin token configured (FORGE_ADMIN_TOKEN is empty)")
        if not header:
            raise Unauthorized("missing Authorization: Bearer token")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization header must be 'Bearer TOKEN'")
        raw = token.encode("utf-8")
        if hmac.compare_digest(raw, self._admin):
            return ADMIN
        node = split_node_token(token)
        if node is not None:
            try:
                stored = self._store.get(NodeToken, node)
            except NotFound:
                stored = None
            if stored is not None and hmac.compare_digest(
                stored.spec.token_sha256.encode(), token_digest(token).encode()
            ):
                return Principal(admin=False, node=node)
        raise Unauthorized("invalid token")


class AuthMiddleware:
    """Resources opt out with ``auth = False`` (health, metrics, openapi, tls/ask, webhook)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict
    ) -> None:
        if resource is None or not getattr(resource, "auth", True):
            req.context.principal = None
            return
        req.context.principal = self.authenticator.authenticate(req.get_header("Authorization"))


def principal(req: falcon.Request) -> Principal:
    p = getattr(req.context, "principal", None)
    if p is None:
        raise Unauthorized("authentication required")
    return p


def require_admin(req: falcon.Request) -> None:
    p = principal(req)
    if not p.admin:
        raise Forbidden(f"{p} may not use this route")


def forbid(p: Principal, what: str) -> Forbidden:
    return Forbidden(f"{p} may not {what}")


def node_lease_name(node: str) -> str:
    return f"node.{node}"


def instance_on_node(obj: Resource, node: str) -> bool:
    return obj.metadata.labels.get(LABEL_NODE) == node
