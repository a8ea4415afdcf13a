"""schemathesis drives every operation of the served OpenAPI document: no 5xx anywhere."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import TOKEN, LiveServer, start_server, stop_server

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture
def fuzz_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A server whose streams are clamped to 1 s, so a generated watch/follow cannot stall the run."""
    server = start_server(tmp_path, extra_args=["--max-stream-seconds", "1"])
    yield server
    stop_server(server)


@pytest.mark.skipif(not SCHEMATHESIS.exists() and not shutil.which("schemathesis"), reason="schemathesis not installed")
@pytest.mark.timeout(150)
def test_schemathesis_finds_no_server_errors(fuzz_server: LiveServer, tmp_path: Path) -> None:
    """Generated requests (valid and invalid) against every operation never get a 5xx.

    One schemathesis worker: with several, hypothesis's lambda-source cache races (an internal
    "AST constructor recursion depth mismatch" error that says nothing about the API).
    """
    exe = str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis"
    proc = subprocess.run(
        [exe, "run", f"{fuzz_server.url}/api/v1/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
         "--checks", "not_a_server_error", "--max-examples", "5", "--max-time", "35", "--seed", "7",
         "--generation-database", "none", "--request-timeout", "15", "--workers", "1", "--no-color",
         "--phases", "examples,coverage,fuzzing"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    server_log = (fuzz_server.data_dir / "server.log").read_text()
    assert proc.returncode == 0, out[-6000:] + "\n--- server log ---\n" + server_log[-3000:]
    assert "Server error" not in out
    assert "Traceback" not in server_log
