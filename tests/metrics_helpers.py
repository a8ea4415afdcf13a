"""Helpers for the /metrics tests: ``promtool check metrics`` and a small exposition reader."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing (make setup installs Debian's prometheus package)"
)


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` over an exposition; exit 0 means no lint problem."""
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def assert_promtool_clean(text: str) -> None:
    r = promtool_check(text)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (r.returncode, r.stdout, r.stderr)


@dataclass
class Exposition:
    types: dict[str, str]  # name on the # TYPE line → type
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {dict(lbl)[label]: v for (n, lbl), v in self.samples.items() if n == name}


def parse_exposition(text: str) -> Exposition:
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text) for s in fam.samples
    }
    return Exposition(types, samples)
