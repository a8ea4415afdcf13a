"""The pure parts of reporting to GitHub: the path a release earns, what is left to send, the
140-character descriptions and how a rate-limited answer is read."""

from __future__ import annotations

import httpx
import pytest

from forge.github.client import DEFAULT_LIMIT_WAIT, limit_until
from forge.github.reports import DESCRIPTION_MAX, Step, pending_steps, report_path, short
from forge.models import Deployment, DeploymentSpec, DeploymentStatus, ObjectMeta


def dep(phase: str, live: bool = False) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name="hello-1"),
        spec=DeploymentSpec(app="hello", commit="a" * 40),
        status=DeploymentStatus(phase=phase, live_time="2027-01-01T00:00:00.000Z" if live else None),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("phase", "live", "names"),
    [
        ("Pending", False, ["deployment", "in_progress", "commit:pending"]),
        ("Live", True, ["deployment", "in_progress", "commit:pending", "success", "commit:success"]),
        (
            "Superseded",
            True,
            ["deployment", "in_progress", "commit:pending", "success", "commit:success", "inactive"],
        ),
        ("Failed", False, ["deployment", "in_progress", "commit:pending", "failure", "commit:failure"]),
        (
            "Failed",
            True,
            [
                "deployment",
                "in_progress",
                "commit:pending",
                "success",
                "commit:success",
                "failure",
                "commit:failure",
            ],
        ),
        ("Cancelled", False, ["deployment", "in_progress", "commit:pending", "inactive", "commit:error"]),
    ],
    ids=["pending", "live", "superseded", "failed", "rolled-back", "cancelled"],
)
def test_report_path(phase: str, live: bool, names: list[str]) -> None:
    """Each phase earns its steps, in GitHub's order."""
    assert [s.name for s in report_path(dep(phase, live))] == names


def test_pending_never_goes_back() -> None:
    """Only what follows the last sent step is pending, even if an earlier one is missing."""
    path = report_path(dep("Superseded", live=True))
    assert pending_steps(path, []) == path
    assert [s.name for s in pending_steps(path, ["deployment", "in_progress", "success"])] == [
        "commit:success",
        "inactive",
    ]
    assert pending_steps(path, ["inactive"]) == []
    assert pending_steps([Step("deployment", "create", "")], ["unknown"]) == [
        Step("deployment", "create", "")
    ]


@pytest.mark.parametrize("text", ["short", "x" * 140, "word " * 60, "y" * 500])
def test_short_fits_github(text: str) -> None:
    """Descriptions never exceed GitHub's 140 characters."""
    out = short(text)
    assert len(out) <= DESCRIPTION_MAX
    assert out == " ".join(text.split()) or out.endswith("…")


@pytest.mark.parametrize(
    ("status", "headers", "expect"),
    [
        (200, {}, None),
        (403, {}, None),  # a permission refusal, not a limit
        (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1100"}, 1101.0),
        (403, {"retry-after": "30"}, 1030.0),
        (429, {"retry-after": "5", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "2000"}, 1005.0),
        (429, {}, 1000.0 + DEFAULT_LIMIT_WAIT),
        (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "999999"}, 1000.0 + 3600.0),
    ],
    ids=["ok", "forbidden", "primary", "secondary", "retry-after-wins", "bare-429", "skewed-reset"],
)
def test_limit_until(status: int, headers: dict[str, str], expect: float | None) -> None:
    """Retry-After wins, then the reset time; a plain 403 is no limit."""
    assert limit_until(httpx.Response(status, headers=headers), now=1000.0) == expect
