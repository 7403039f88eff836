"""schemathesis against the running API's own OpenAPI schema: no request gets a 5xx."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.stack import Stack
from tests.security.conftest import KEY

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25  # per operation and phase
# The fuzzing phase repeats until this budget is spent (about 4,000 requests here).
MAX_TIME_S = 30


def test_schemathesis_finds_no_server_error(secure_stack: Stack, tmp_path: Path) -> None:
    report = tmp_path / "st.json"
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{secure_stack.url}/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_TIME_S),
        "--phases", "coverage,fuzzing",
        "--header", f"Authorization: Bearer {KEY}",
        "--generation-database", "none", "--seed", "20261123",
        "--request-timeout", "30", "--workers", "1", "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=MAX_TIME_S + 60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    summary = json.loads(report.read_text())
    cases, ops = summary["test_cases"], summary["operations"]
    print(f"schemathesis: {ops['tested']}/{ops['total']} operations, {cases}")
    assert ops["tested"] == ops["total"]
    assert cases["generated"] > 0
    assert cases["with_failures"] == 0 and cases["errored"] == 0
