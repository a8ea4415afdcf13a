"""Suite-wide order: the longest test files first, so that ``make test``'s workers (pytest-xdist,
``--dist loadfile --no-loadscope-reorder``: one file per worker at a time, files handed out in
this order) start the long waits at once and fill the tail with the short files.

Only whole files move: the tests of one file keep their order (several share a module-scoped
install and build on each other), so a run without xdist is as deterministic as before. The
order is a hint for the wall time, never for correctness: every file passes alone.
"""

from __future__ import annotations

import pytest

# Measured the longest (pytest --durations, sum per file), longest first; any file not named
# here comes after them, the e2e ones before the rest. A new long file may be added here.
LONGEST_FIRST: tuple[str, ...] = (
    "sim/test_sim.py",  # 1,664 s at load 15-24 (CPU-bound, 2 jobs): the biggest block of CPU
    "e2e/test_releases.py",  # 277 s (on a loaded machine, one process)
    "e2e/test_zeroconf.py",  # 261 s
    "e2e/test_config_secrets.py",  # 256 s
    "e2e/test_restarts.py",  # 243 s
    "e2e/test_cli_live.py",  # 235 s
    "e2e/test_data_plane.py",  # 175 s
    "e2e/test_build_deadlines.py",  # 161 s
    "e2e/test_storage_full_disk.py",  # 149 s
    "e2e/test_process_types.py",  # 142 s
    "e2e/test_two_installs.py",  # 127 s
)


def _rank(path: str) -> tuple[int, int]:
    for i, name in enumerate(LONGEST_FIRST):
        if path.endswith(name):
            return (0, i)
    return (1, 0) if "/e2e/" in path else (2, 0)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    ranks = {id(item): _rank(str(item.path)) for item in items}
    items.sort(key=lambda item: ranks[id(item)])  # stable: each file's own order is kept
