"""GitHub webhook deliveries, the pure part: signature, payload decoding, push → Deployments.

The falcon resource (``forge/api/webhook.py``) does the I/O; everything it decides is here so
it can be tested without HTTP. Registered Apps are the allowlist: a push creates a Deployment
only for an App whose ``spec.repo`` equals the repository (owner/name compared
case-insensitively, as GitHub does), whose ``spec.branches`` holds the pushed branch and whose
``autoDeploy`` is on. The webhook writes spec only; controllers set every status.

GitHub's payloads carry far more than Forge reads and grow over time, so the push model
ignores unknown fields (unlike Forge's own API bodies) and checks only what it uses.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs

from forge.errors import BadRequest
from forge.models import (
    COMMIT,
    App,
    Deployment,
    DeploymentConfig,
    Trigger,
)
from forge.release import new_release

MAX_BODY: Final[int] = 25 * 1024 * 1024
ZERO_COMMIT: Final[str] = "0" * 40
BRANCH_PREFIX: Final[str] = "refs/heads/"
DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """``X-Hub-Signature-256`` check in constant time; an empty secret never verifies."""
    given = (header or "").strip()
    if not secret or not given.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode("ascii"), given.lower().encode("utf-8"))


def decode_payload(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The JSON object of a delivery sent as ``application/json`` or form-encoded ``payload=``."""
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, max_num_fields=100
            )
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("form body is not valid application/x-www-form-urlencoded") from None
        values = form.get("payload")
        if not values or len(values) != 1:
            raise BadRequest(
                "form body must carry exactly one payload field",
                [{"path": "payload", "message": "field required"}],
            )
        text = values[0]
    elif ctype == "application/json":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("body is not UTF-8") from None
    else:
        raise BadRequest(
            f"content type {ctype!r} is not supported; configure the webhook to send "
            "application/json or application/x-www-form-urlencoded"
        )
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"payload is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"payload must be a JSON object, not {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Push:
    """What Forge reads from a push: repository, ref, the new head and whether it deletes."""

    repo: str
    ref: str
    after: str
    deleted: bool

    @property
    def branch(self) -> str | None:
        return self.ref[len(BRANCH_PREFIX) :] if self.ref.startswith(BRANCH_PREFIX) else None


def parse_push(payload: dict[str, Any]) -> Push:
    """Fields of a push payload; ``BadRequest`` naming the field that is missing or wrong."""
    repo = payload.get("repository")
    full_name = repo.get("full_name") if isinstance(repo, dict) else None
    if not isinstance(full_name, str) or "/" not in full_name:
        raise _field("repository.full_name", "must be owner/name")
    ref, after = payload.get("ref"), payload.get("after")
    if not isinstance(ref, str) or not ref:
        raise _field("ref", "must be a non-empty string")
    if not isinstance(after, str):
        raise _field("after", "must be a string")
    deleted = payload.get("deleted", False) is True or after == ZERO_COMMIT
    if not deleted and not COMMIT.match(after):
        raise _field("after", f"{after[:64]!r} is not a commit (40 lowercase hex characters)")
    return Push(repo=full_name, ref=ref, after=after, deleted=deleted)


def _field(path: str, message: str) -> BadRequest:
    return BadRequest(f"push payload: {path}: {message}", [{"path": path, "message": message}])


def ignore_reason(push: Push) -> str | None:
    """Why a push can never deploy anything, whatever Apps exist (None when it might)."""
    if push.deleted:
        what = "branch" if push.branch is not None else "tag" if push.ref.startswith("refs/tags/") else "ref"
        return f"{what} deletion of {push.ref} deploys nothing"
    if push.branch is None:
        return f"{push.ref} is not a branch (tag pushes deploy nothing)"
    return None


def select_apps(apps: list[App], push: Push) -> tuple[list[App], str | None]:
    """Apps this push deploys, or the reason none is (unknown repo, branch, autoDeploy off)."""
    repo = push.repo.lower()
    tracking = [a for a in apps if a.spec.repo.lower() == repo and a.metadata.deletion_timestamp is None]
    if not tracking:
        return [], f"no App tracks repository {push.repo}"
    on_branch = [a for a in tracking if push.branch in a.spec.branches]
    if not on_branch:
        return [], f"no App tracks branch {push.branch} of {push.repo}"
    auto = [a for a in on_branch if a.spec.auto_deploy]
    if not auto:
        names = ", ".join(sorted(a.metadata.name for a in on_branch))
        return [], f"autoDeploy is off for {names}"
    return sorted(auto, key=lambda a: a.metadata.name), None


def find_delivery(deployments: list[Deployment], delivery_id: str | None) -> Deployment | None:
    """The Deployment an earlier copy of this delivery created, if any."""
    if not delivery_id:
        return None
    return next((d for d in deployments if d.spec.trigger.delivery_id == delivery_id), None)


def build_deployment(
    app: App, number: int, push: Push, delivery_id: str | None, config: DeploymentConfig
) -> Deployment:
    """Release ``APP-N`` of the pushed commit with ``config`` — ``forge.release.release_config``
    of the App and its Secret, the one builder every writer uses (spec only)."""
    return new_release(
        app,
        number,
        commit=push.after,
        ref=push.ref,
        trigger=Trigger(type="webhook", delivery_id=delivery_id),
        config=config,
    )
