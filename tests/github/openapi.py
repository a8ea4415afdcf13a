"""GitHub's published OpenAPI description (npm ``@octokit/openapi``) as a request validator, and
GitHub's published webhook examples (npm ``@octokit/webhooks-examples``).

``make setup`` installs both into ``tests/github/node_modules``. ``check_request`` says what is
wrong with a request Forge sent, judged by the description: the operation must exist, path and
query parameters must match their schemas, a body must be JSON valid against the operation's
request schema (OpenAPI 3.0: ``nullable``, ``readOnly`` for writes) and carry no property the
schema does not name — GitHub ignores unknown properties, so a misspelt one would otherwise
fail silently.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from openapi_schema_validator import OAS30WriteValidator, oas30_format_checker

ROOT = Path(__file__).resolve().parent / "node_modules" / "@octokit"
SPEC_FILE = ROOT / "openapi" / "generated" / "api.github.com.json"
EXAMPLES_FILE = ROOT / "webhooks-examples" / "api.github.com" / "index.json"

needs_octokit = pytest.mark.skipif(
    not SPEC_FILE.exists() or not EXAMPLES_FILE.exists(),
    reason="@octokit/openapi and @octokit/webhooks-examples are not installed (make setup)",
)


@functools.cache
def spec() -> dict[str, Any]:
    return json.loads(SPEC_FILE.read_text())


@functools.cache
def _routes() -> list[tuple[re.Pattern[str], str]]:
    out = []
    for template in spec()["paths"]:
        rx = "^" + re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(template)) + "$"
        out.append((re.compile(rx), template))
    # literal paths first (``/repos/{o}/{r}/installation`` before any templated sibling)
    out.sort(key=lambda r: r[1].count("{"))
    return out


def _resolve(node: Any, seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every ``#/components/...`` reference inlined (cycles left as ``{}``)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            if ref in seen:
                return {}
            target: Any = spec()
            for part in ref[2:].split("/"):
                target = target[part]
            return _resolve(target, (*seen, ref))
        return {k: _resolve(v, seen) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, seen) for v in node]
    return node


def find_operation(method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]] | None:
    """(template, resolved operation, path parameters) for a request, or None."""
    for rx, template in _routes():
        m = rx.match(path)
        if m is None:
            continue
        op = spec()["paths"][template].get(method.lower())
        if op is None:
            continue
        params = {}
        names = re.findall(r"\{([^}]+)\}", template)
        for name, value in zip(names, m.groups(), strict=True):
            params[name] = value
        return template, _operation(template, method.lower()), params
    return None


@functools.cache
def _operation(template: str, method: str) -> dict[str, Any]:
    return _resolve(spec()["paths"][template][method])  # type: ignore[no-any-return]


def _coerce(value: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "integer":
        return int(value) if re.fullmatch(r"-?\d+", value) else value
    if kind == "boolean":
        return {"true": True, "false": False}.get(value, value)
    return value


def _errors(schema: dict[str, Any], value: Any, where: str) -> list[str]:
    validator = OAS30WriteValidator(schema, format_checker=oas30_format_checker)
    return [
        f"{where}: {'/'.join(map(str, e.path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(value)
    ]


def check_request(
    method: str, path: str, query: dict[str, str], body: bytes, content_type: str | None
) -> tuple[str | None, list[str]]:
    """(operation template or None, problems); no problems means GitHub would accept its shape."""
    found = find_operation(method, path)
    if found is None:
        return None, [f"{method} {path}: no such operation in GitHub's REST API"]
    template, op, path_params = found
    problems: list[str] = []
    declared = {p["name"]: p for p in op.get("parameters", [])}
    for name, value in path_params.items():
        p = declared.get(name)
        if p is None:
            problems.append(f"path parameter {name} is not declared")
            continue
        problems += _errors(p["schema"], _coerce(value, p["schema"]), f"path {name}")
    for name, value in query.items():
        p = declared.get(name)
        if p is None or p.get("in") != "query":
            problems.append(f"query parameter {name!r} is not a parameter of {method} {template}")
            continue
        problems += _errors(p["schema"], _coerce(value, p["schema"]), f"query {name}")
    for name, p in declared.items():
        if p.get("in") == "query" and p.get("required") and name not in query:
            problems.append(f"query parameter {name} is required")
    rb = op.get("requestBody")
    if body:
        if rb is None:
            problems.append(f"{method} {template} takes no body")
        else:
            if (content_type or "").split(";")[0].strip() != "application/json":
                problems.append(f"body content type {content_type!r} is not application/json")
            try:
                data = json.loads(body)
            except ValueError:
                return template, [*problems, "body is not JSON"]
            schema = rb["content"]["application/json"]["schema"]
            problems += _errors(schema, data, "body")
            known = schema.get("properties")
            if isinstance(data, dict) and isinstance(known, dict):
                for key in data:
                    if key not in known:
                        problems.append(f"body: {key!r} is not a property GitHub knows")
    elif rb is not None and rb.get("required"):
        problems.append(f"{method} {template} requires a body")
    return template, problems


def example_response(template: str, method: str, status: str) -> Any:
    """A copy of the description's own example answer for an operation."""
    op = _operation(template, method.lower())
    content = op["responses"][status].get("content", {}).get("application/json", {})
    examples = content.get("examples") or {}
    for ex in examples.values():
        if "value" in ex:
            return copy.deepcopy(ex["value"])
    return copy.deepcopy(content.get("example", {}))


@functools.cache
def _webhook_examples() -> dict[str, list[dict[str, Any]]]:
    return {e["name"]: e["examples"] for e in json.loads(EXAMPLES_FILE.read_text())}


def webhook_example(event: str, action: str | None = None, index: int = 0) -> dict[str, Any]:
    """A deep copy of GitHub's ``index``-th published example of ``event`` (with ``action``)."""
    found = [e for e in _webhook_examples()[event] if action is None or e.get("action") == action]
    if not found:
        raise LookupError(f"no published example of {event} {action}")
    return copy.deepcopy(found[index])
