"""Records: names, repos, commits, envelope and conditions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from forge.errors import pydantic_errors
from forge.models import (
    App,
    Deployment,
    Event,
    Node,
    Status,
    deployment_number,
    is_repo,
    kind_class,
    parse_record,
    set_condition,
)


@pytest.mark.parametrize("name,ok", [
    ("hello", True), ("a", True), ("a" * 40, True), ("a" * 41, False), ("Hello", False), ("-a", False),
    ("a-", False), ("a_b", False), ("a.b", False), ("", False), ("my-app-2", True),
], ids=lambda v: str(v)[:12])
def test_app_names_are_short_dns_labels(name: str, ok: bool) -> None:
    """App names are DNS-1123 labels of at most 40 characters."""
    body = {"metadata": {"name": name}, "spec": {"repo": "acme/hello"}}
    if ok:
        assert App.model_validate(body).name == name
    else:
        with pytest.raises(ValidationError):
            App.model_validate(body)


@pytest.mark.parametrize("repo,ok", [
    ("acme/hello", True), ("Acme-Co/hello.world_2", True), ("acme/.", False), ("acme/..", False),
    ("-acme/x", False), ("acme-/x", False), ("ac--me/x", False), ("acme", False), ("acme/x/y", False),
    ("a" * 40 + "/x", False), ("acme/" + "x" * 101, False), ("acme/x.git", False),
], ids=str)
def test_repo_follows_github_rules(repo: str, ok: bool) -> None:
    """Repositories follow GitHub's owner/name rules."""
    assert is_repo(repo) is ok


@pytest.mark.parametrize("commit,ok", [
    ("a" * 40, True), ("0123456789abcdef0123456789abcdef01234567", True), ("A" * 40, False),
    ("a" * 39, False), ("g" * 40, False),
], ids=["lower", "mixed-digits", "upper", "short", "not-hex"])
def test_commit_is_40_lowercase_hex(commit: str, ok: bool) -> None:
    """Deployment commits are 40 lowercase hex characters."""
    body = {"metadata": {"name": "hello-1"}, "spec": {"app": "hello", "commit": commit}}
    if ok:
        Deployment.model_validate(body)
    else:
        with pytest.raises(ValidationError):
            Deployment.model_validate(body)


def test_unknown_field_is_named_with_its_path() -> None:
    """An unknown field is an error that names its dotted path."""
    with pytest.raises(ValidationError) as ei:
        App.model_validate({"metadata": {"name": "hello"}, "spec": {"repo": "acme/hello", "replica": 2}})
    assert {"path": "spec.replica", "message": "unknown field 'replica'"} in pydantic_errors(ei.value)


def test_json_is_camel_case_and_round_trips() -> None:
    """Records dump camelCase JSON and parse back to the same model."""
    app = App.model_validate({"metadata": {"name": "hello"}, "spec": {"repo": "acme/hello", "autoDeploy": False}})
    data = app.dump()
    assert data["spec"]["autoDeploy"] is False and data["kind"] == "App" and "resourceVersion" in data["metadata"]
    assert parse_record(data) == app


def test_node_and_event_names_may_be_dns_names() -> None:
    """Nodes and Events may carry dotted names; Apps may not."""
    Node.model_validate({"metadata": {"name": "worker-1.example.com"}})
    Event.model_validate({"metadata": {"name": "hello.abc123"}, "spec": {
        "involvedObject": {"kind": "App", "name": "hello"}, "reason": "Created"}})


def test_kind_in_body_must_match_class() -> None:
    """A body whose kind names another record is refused."""
    with pytest.raises(ValidationError):
        App.model_validate({"kind": "Node", "metadata": {"name": "x"}, "spec": {"repo": "a/b"}})


@pytest.mark.parametrize("alias", ["App", "app", "apps"])
def test_kind_class_resolves_aliases(alias: str) -> None:
    """Kinds resolve by kind, lowercase kind or plural."""
    assert kind_class(alias) is App


def test_condition_transition_time_moves_only_on_status_change() -> None:
    """lastTransitionTime changes only when the condition's status changes."""
    st = Status()
    assert set_condition(st, "Ready", "False", "Starting", "", "t1")
    assert not set_condition(st, "Ready", "False", "Starting", "", "t2")
    assert set_condition(st, "Ready", "False", "Probing", "x", "t3")
    assert st.condition("Ready").last_transition_time == "t1"
    assert set_condition(st, "Ready", "True", "Up", "", "t4")
    assert st.condition("Ready").last_transition_time == "t4" and st.is_true("Ready")


@pytest.mark.parametrize("name,n", [("hello-12", 12), ("a-b-3", 3), ("hello", -1)], ids=str)
def test_deployment_number(name: str, n: int) -> None:
    """Release numbers come from the APP-N name."""
    assert deployment_number(name) == n
