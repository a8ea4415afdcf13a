"""Conformance: nothing acknowledged is lost when the writing process is SIGKILLed mid-stream."""

from __future__ import annotations

import os
import signal

import pytest

from tests.store.store_helpers import Backend, app

ACKED = 60


@pytest.mark.parametrize("acked", [1, ACKED], ids=["first-write", "many-writes"])
def test_sigkill_loses_no_acknowledged_write(backend: Backend, acked: int) -> None:
    """Every write the killed process acknowledged is there on reopen, and each write is all-or-nothing."""
    proc = backend.writer("crash", 100_000)
    assert proc.stdout is not None
    seen = []
    try:
        while len(seen) < acked:
            line = proc.stdout.readline()
            assert line, f"writer ended after {len(seen)} writes (rc={proc.poll()})"
            seen.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    store = backend.open()
    try:
        items, rev = store.list("App")
        names = {o.metadata.name for o in items}
        assert set(seen) <= names
        # One create per revision: a torn write would leave a revision without its record.
        assert len(items) == rev
        assert sorted(o.metadata.resource_version for o in items) == list(range(1, rev + 1))
        assert [e.revision for e in store.watch("App", 0, timeout=0, limit=rev + 1)] == list(range(1, rev + 1))
        created = store.create(app("after-crash"))
        assert created.metadata.resource_version == rev + 1
    finally:
        store.close()

