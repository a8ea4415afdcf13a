"""Pull-request previews, the pure part: deliveries → ``Preview`` specs, and what a preview needs.

A ``pull_request`` delivery (``opened``, ``reopened``, ``synchronize``, ``ready_for_review``,
``converted_to_draft``, ``closed``) against a branch an App with ``previews.enabled`` tracks
writes the Preview ``APP-pr-N`` (spec only). A head is **trusted** when it lives in the base
repository and its author is an OWNER, MEMBER or COLLABORATOR; anything else builds nothing
until approved for that very head: ``forge previews approve APP N`` or a ``/forge approve``
comment (``issue_comment``) from an OWNER, MEMBER or COLLABORATOR made after the head was
pushed. A new push moves ``headSha`` and so needs a new approval.

``plan_preview`` decides what a Preview needs now (delete, wait, deploy) for the previews
controller; GitHub's payloads grow, so only the fields read here are checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from forge.clock import parse_iso
from forge.errors import BadRequest
from forge.models import (
    APP_NAME_MAX,
    COMMIT,
    LABEL_APP,
    LABEL_PR,
    LABEL_PREVIEW_OF,
    TRUSTED_ASSOCIATIONS,
    App,
    ObjectMeta,
    Preview,
    PreviewSpec,
)

ACTIONS: Final[frozenset[str]] = frozenset(
    {"opened", "reopened", "synchronize", "ready_for_review", "converted_to_draft", "closed"}
)
PUSH_ACTIONS: Final[frozenset[str]] = frozenset({"opened", "reopened", "synchronize"})
APPROVE_COMMAND: Final[str] = "/forge approve"
# A closed preview whose teardown GitHub never heard of (GitHub gone that long) is forgotten.
CLOSED_RECORD_GRACE: Final[float] = 24 * 3600.0


def preview_name(app: str, number: int) -> str:
    return f"{app}-pr-{number}"


def pull_ref(number: int) -> str:
    return f"refs/pull/{number}/head"


@dataclass(frozen=True)
class PullRequest:
    action: str
    number: int
    repo: str  # base repository
    base_ref: str
    head_sha: str
    head_repo: str  # "" when the fork was deleted
    author: str
    association: str
    draft: bool
    updated_at: str | None

    @property
    def trusted(self) -> bool:
        return self.head_repo.lower() == self.repo.lower() and self.association in TRUSTED_ASSOCIATIONS


def _get(d: Any, path: str) -> Any:
    for part in path.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _need(payload: dict[str, Any], path: str, kind: type) -> Any:
    value = _get(payload, path)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise BadRequest(
            f"pull_request payload: {path} is missing or not a {kind.__name__}",
            [{"path": path, "message": f"must be a {kind.__name__}"}],
        )
    return value


def parse_pull_request(payload: dict[str, Any]) -> PullRequest:
    """What Forge reads of a ``pull_request`` delivery; ``BadRequest`` naming a bad field."""
    head_sha = _need(payload, "pull_request.head.sha", str)
    if not COMMIT.match(head_sha):
        raise BadRequest(
            "pull_request payload: pull_request.head.sha is not a commit",
            [{"path": "pull_request.head.sha", "message": "40 lowercase hex characters"}],
        )
    head_repo = _get(payload, "pull_request.head.repo.full_name")
    return PullRequest(
        action=_need(payload, "action", str),
        number=_need(payload, "pull_request.number", int),
        repo=_need(payload, "repository.full_name", str),
        base_ref=_need(payload, "pull_request.base.ref", str),
        head_sha=head_sha,
        head_repo=head_repo if isinstance(head_repo, str) else "",
        author=str(_get(payload, "pull_request.user.login") or ""),
        association=str(_get(payload, "pull_request.author_association") or ""),
        draft=_get(payload, "pull_request.draft") is True,
        updated_at=_get(payload, "pull_request.updated_at")
        if isinstance(_get(payload, "pull_request.updated_at"), str)
        else None,
    )


def apps_for(apps: list[App], repo: str, base_ref: str) -> list[App]:
    """Apps with previews on whose repository and branches this pull request targets."""
    return sorted(
        (
            a
            for a in apps
            if a.spec.previews is not None
            and a.spec.previews.enabled
            and a.spec.repo.lower() == repo.lower()
            and base_ref in a.spec.branches
            and LABEL_PREVIEW_OF not in a.metadata.labels
            and a.metadata.deletion_timestamp is None
            and len(preview_name(a.metadata.name, 1)) <= APP_NAME_MAX
        ),
        key=lambda a: a.metadata.name,
    )


def preview_spec(current: Preview | None, app: App, pr: PullRequest, now_iso: str) -> PreviewSpec:
    """The Preview's spec after this delivery (a new head drops any approval)."""
    old = current.spec if current is not None else None
    new_head = old is None or old.head_sha != pr.head_sha
    pushed = new_head or pr.action in ("opened", "reopened")
    spec = PreviewSpec(
        app=app.metadata.name,
        number=pr.number,
        repo=pr.repo,
        base_ref=pr.base_ref,
        head_sha=pr.head_sha,
        head_repo=pr.head_repo,
        author=pr.author,
        author_association=pr.association,
        draft=pr.draft,
        state="closed" if pr.action == "closed" else "open",
        trusted=pr.trusted,
        approved_sha=None if new_head or old is None else old.approved_sha,
        approved_by=None if new_head or old is None else old.approved_by,
        head_time=(pr.updated_at or now_iso) if pushed or old is None else old.head_time,
    )
    return spec


def new_preview(app: App, spec: PreviewSpec) -> Preview:
    name = preview_name(app.metadata.name, spec.number)
    labels = {LABEL_PREVIEW_OF: app.metadata.name, LABEL_PR: str(spec.number), LABEL_APP: name}
    return Preview(metadata=ObjectMeta(name=name, labels=labels), spec=spec)


@dataclass(frozen=True)
class Comment:
    repo: str
    number: int
    body: str
    association: str
    author: str
    created_at: str | None


def parse_comment(payload: dict[str, Any]) -> Comment | None:
    """A new comment on a pull request (None for issues, edits and deletions)."""
    if payload.get("action") != "created" or not isinstance(_get(payload, "issue.pull_request"), dict):
        return None
    return Comment(
        repo=_need(payload, "repository.full_name", str),
        number=_need(payload, "issue.number", int),
        body=str(_get(payload, "comment.body") or ""),
        association=str(_get(payload, "comment.author_association") or ""),
        author=str(_get(payload, "comment.user.login") or ""),
        created_at=_get(payload, "comment.created_at")
        if isinstance(_get(payload, "comment.created_at"), str)
        else None,
    )


def is_approval(comment: Comment) -> bool:
    first = comment.body.strip().splitlines()[0].strip() if comment.body.strip() else ""
    return first.lower() == APPROVE_COMMAND and comment.association in TRUSTED_ASSOCIATIONS


def approval_applies(preview: Preview, comment: Comment) -> bool:
    """A comment approves the head only when written after that head was pushed: an approval
    typed before a push never covers code its author had not seen."""
    if comment.created_at is None or preview.spec.head_time is None:
        return comment.created_at is None and preview.spec.head_time is None
    return parse_iso(comment.created_at) >= parse_iso(preview.spec.head_time)


# ---------------------------------------------------------------------- what a preview needs

Action = Literal["delete", "draft", "await-approval", "deploy"]


@dataclass(frozen=True)
class PreviewPlan:
    action: Action
    phase: str
    reason: str
    expires_at: float | None = None


def is_approved(preview: Preview) -> bool:
    return preview.spec.trusted or preview.spec.approved_sha == preview.spec.head_sha


def plan_preview(preview: Preview, parent: App | None, now: float) -> PreviewPlan:
    """Pure: what the preview needs given its parent App and the time."""
    spec = preview.spec
    if spec.state == "closed":
        return PreviewPlan("delete", "Closed", f"pull request #{spec.number} was closed")
    settings = parent.spec.previews if parent is not None else None
    if parent is None or settings is None or not settings.enabled:
        return PreviewPlan("delete", "Closed", f"App {spec.app} no longer has previews")
    pushed = parse_iso(spec.head_time) if spec.head_time else now
    expires = pushed + settings.ttl_seconds
    if now >= expires:
        return PreviewPlan("delete", "Expired", f"no push for {settings.ttl} (the previews ttl)")
    if spec.draft:
        return PreviewPlan("draft", "Draft", "a draft pull request builds nothing until it is ready", expires)
    if not is_approved(preview):
        who = (
            "a fork"
            if spec.head_repo.lower() != spec.repo.lower()
            else f"{spec.author} ({spec.author_association or 'no association'})"
        )
        return PreviewPlan(
            "await-approval",
            "AwaitingApproval",
            f"{spec.head_sha[:12]} from {who} waits for approval: a '/forge approve' comment or "
            f"forge previews approve {spec.app} {spec.number}",
            expires,
        )
    return PreviewPlan("deploy", "Deploying", f"deploying {spec.head_sha[:12]}", expires)


def preview_env(parent: App, preview: Preview) -> dict[str, str]:
    """The preview App's env: the App's, the previews overrides, then Forge's own markers."""
    settings = parent.spec.previews
    env = dict(parent.spec.env)
    if settings is not None:
        env.update(settings.env)
    env.update(FORGE_PREVIEW="1", FORGE_PR_NUMBER=str(preview.spec.number))
    return env


def gets_secrets(parent: App, preview: Preview) -> bool:
    """Only a trusted head of the App's own repository, and only with ``secrets: inherit``."""
    settings = parent.spec.previews
    return (
        settings is not None
        and settings.secrets == "inherit"
        and preview.spec.trusted
        and preview.spec.head_repo.lower() == preview.spec.repo.lower()
    )
