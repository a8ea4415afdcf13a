"""What a release tells GitHub, decided from the Deployment record alone (pure functions).

A release's history on GitHub is a path of steps, each sent once and in order:

    deployment → in_progress → commit:pending → success → commit:success → inactive
                                              ↘ failure → commit:failure

``report_path(dep)`` is that path for the release as it stands now; because a release only
moves forward (phases are monotonic and ``liveTime`` stays once set) the path only ever grows
at its end. The reporter sends what follows the last step it recorded as sent
(``pending_steps``), so a report GitHub missed while it was down goes out later, in order, and
a newer state is never followed by an older one: a step before the last sent one is never sent
again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from forge.models import LABEL_PREVIEW_OF, App, Deployment

CREATE: Final[str] = "deployment"
DESCRIPTION_MAX: Final[int] = 140
# Terminal releases found without any report that ended longer ago than this are history from
# before reporting was switched on, not reports GitHub missed: they are not sent.
REPORT_HORIZON_SECONDS: Final[float] = 24 * 3600.0


@dataclass(frozen=True)
class Step:
    """One call: ``create`` the GitHub Deployment, a deployment ``status`` or a ``commit`` status."""

    name: str  # unique within a path: "deployment", "in_progress", "commit:pending", ...
    kind: str  # "create" | "status" | "commit"
    state: str


def _status(state: str) -> Step:
    return Step(state, "status", state)


def _commit(state: str) -> Step:
    return Step(f"commit:{state}", "commit", state)


def report_path(dep: Deployment) -> list[Step]:
    """Every step this release has earned so far, in the order GitHub must see them."""
    st = dep.status
    path = [Step(CREATE, "create", ""), _status("in_progress"), _commit("pending")]
    if st.live_time:
        path += [_status("success"), _commit("success")]
    if st.phase == "Superseded":
        path.append(_status("inactive"))
    elif st.phase == "Failed":
        path += [_status("failure"), _commit("failure")]
    elif st.phase == "Cancelled":
        # a newer push won before this one went live: nothing of it ever served
        path += [_status("inactive"), _commit("error")]
    return path


def pending_steps(path: list[Step], sent: list[str]) -> list[Step]:
    """The steps of ``path`` after the last one already sent (never one before it)."""
    names = [s.name for s in path]
    last = max((names.index(n) for n in sent if n in names), default=-1)
    return path[last + 1 :]


def is_preview(app: App | None) -> bool:
    return app is not None and LABEL_PREVIEW_OF in app.metadata.labels


def environment_of(dep: Deployment) -> str:
    return dep.spec.app


def short(text: str, limit: int = DESCRIPTION_MAX) -> str:
    """GitHub's ``description`` limit is 140 characters: cut on a word, with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "…"


def describe(dep: Deployment, step: Step) -> str:
    name = dep.metadata.name
    st = dep.status
    if step.state in ("in_progress", "pending"):
        return short(f"Forge is deploying {name}")
    if step.state == "success":
        return short(f"{name} is live")
    if step.state in ("failure", "error"):
        why = f"{st.reason}: {st.message}" if st.message else st.reason or "failed"
        verb = "was cancelled" if st.phase == "Cancelled" else "failed"
        return short(f"{name} {verb}: {why}")
    if step.state == "inactive":
        if st.phase == "Cancelled":
            return short(f"{name} was cancelled: {st.message or 'a newer release won'}")
        return short(f"{name} was superseded by a newer release")
    return short(name)


def deployment_body(dep: Deployment, app: App | None) -> dict[str, Any]:
    """``POST /repos/{owner}/{repo}/deployments``: the release as a GitHub Deployment."""
    preview = is_preview(app)
    return {
        "ref": dep.spec.commit,
        "task": "deploy",
        "environment": environment_of(dep),
        "production_environment": not preview,
        "transient_environment": preview,
        "auto_merge": False,
        "required_contexts": [],
        "payload": {"forge": {"release": dep.metadata.name, "app": dep.spec.app, "uid": dep.metadata.uid}},
        "description": short(f"Forge release {dep.metadata.name}"),
    }


def status_body(dep: Deployment, step: Step, log_url: str, environment_url: str | None) -> dict[str, Any]:
    """``POST …/deployments/{id}/statuses`` for one state."""
    body: dict[str, Any] = {
        "state": step.state,
        "log_url": log_url,
        "description": describe(dep, step),
        "auto_inactive": False,  # Forge marks its releases inactive itself, in order
    }
    if step.state == "success" and environment_url:
        body["environment_url"] = environment_url
    return body


def commit_body(dep: Deployment, step: Step, log_url: str) -> dict[str, Any]:
    """``POST /repos/{owner}/{repo}/statuses/{sha}`` with context ``forge/APP``."""
    return {
        "state": step.state,
        "target_url": log_url,
        "description": describe(dep, step),
        "context": f"forge/{dep.spec.app}",
    }


def find_release(deployments: list[dict[str, Any]], release: str, uid: str = "") -> int | None:
    """The id of the GitHub Deployment an earlier (interrupted) report created for this very
    record: its name and uid (a name comes back when a deleted App is created again)."""
    for d in deployments:
        payload = d.get("payload")
        forge = payload.get("forge") if isinstance(payload, dict) else None
        if (
            isinstance(forge, dict)
            and forge.get("release") == release
            and forge.get("uid", "") == uid
            and isinstance(d.get("id"), int)
        ):
            return int(d["id"])
    return None
