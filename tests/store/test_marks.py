"""Conformance: metric marks — idempotent per (metric, uid, label), counted per label, never lost."""

from __future__ import annotations

import pytest

from forge.errors import Invalid
from forge.store.base import Store
from tests.store.store_helpers import Backend, app


def test_mark_is_idempotent_and_reports_novelty(store: Store) -> None:
    """The first mark of (metric, uid, label) is new; repeating it changes nothing."""
    assert store.mark("forge_deployments_total", "u1", "Pending") is True
    assert store.mark("forge_deployments_total", "u1", "Pending") is False
    assert store.mark("forge_deployments_total", "u1", "Live") is True
    assert store.mark("forge_tasks_total", "u1", "Pending") is True
    assert store.tally("forge_deployments_total") == {"Live": 1, "Pending": 1}
    assert store.tally("forge_tasks_total") == {"Pending": 1}


@pytest.mark.parametrize(
    ("marks", "expected"),
    [
        ([], {}),
        ([("a", "Pending"), ("b", "Pending"), ("a", "Live")], {"Pending": 2, "Live": 1}),
        ([("a", "Failed"), ("a", "Failed"), ("b", "Failed"), ("c", "Cancelled")], {"Failed": 2, "Cancelled": 1}),
    ],
    ids=["empty", "two-records", "duplicates-merge"],
)
def test_tally_counts_records_per_label(store: Store, marks: list[tuple[str, str]], expected: dict[str, int]) -> None:
    """tally counts distinct records per label of one metric."""
    for uid, label in marks:
        store.mark("m", uid, label)
    store.mark("other", "z", "Pending")
    assert store.tally("m") == expected


def test_observations_keep_the_first_value(store: Store) -> None:
    """observations lists marked values of one label; a re-mark never replaces the value."""
    assert store.mark("d", "u1", "live", 12.5) is True
    assert store.mark("d", "u1", "live", 99.0) is False
    store.mark("d", "u2", "live", 3.0)
    store.mark("d", "u3", "live")  # no value: counted, not observed
    store.mark("d", "u4", "other", 7.0)
    assert sorted(store.observations("d", "live")) == [3.0, 12.5]
    assert store.tally("d") == {"live": 3, "other": 1}
    assert store.observations("d", "missing") == []


def test_marks_outlive_records_and_reopening(backend: Backend) -> None:
    """Deleting the marked record or reopening the store keeps every mark (counts only grow)."""
    s = backend.open()
    try:
        rec = s.create(app("hello"))
        s.mark("m", rec.metadata.uid, "Live", 4.0)
        s.delete("App", "hello")
        rev = s.revision()
    finally:
        s.close()
    again = backend.open()
    try:
        assert again.tally("m") == {"Live": 1}
        assert again.observations("m", "Live") == [4.0]
        assert again.revision() == rev  # marks are not records: no revision, no watch event
    finally:
        again.close()


def test_mark_needs_metric_and_uid(store: Store) -> None:
    """An empty metric or uid is Invalid."""
    with pytest.raises(Invalid):
        store.mark("", "u1", "Live")
    with pytest.raises(Invalid):
        store.mark("m", "", "Live")
