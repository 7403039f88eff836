"""schemathesis against the running API's own OpenAPI schema.

Every answer must be what the schema promises: no 5xx, a status code the operation declares,
its declared content type and headers, and a body that validates against the declared
response model (error bodies included).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.stack import Stack
from tests.security.conftest import KEY

pytestmark = pytest.mark.integration

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
MAX_EXAMPLES = 25  # per operation and phase
# No --max-time: with one, the fuzzing phase repeats until the budget is spent (about 4,000
# requests in 30 s here) whatever it has already covered; without, each operation gets its
# coverage cases and MAX_EXAMPLES fuzzed ones, and the run ends when they are done.
TIMEOUT_S = 120


def test_answers_conform_to_the_schema(secure_stack: Stack, tmp_path: Path) -> None:
    report = tmp_path / "st.json"
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{secure_stack.url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(MAX_EXAMPLES),
        "--phases", "coverage,fuzzing",
        "--header", f"Authorization: Bearer {KEY}",
        "--generation-database", "none", "--seed", "20261123",
        "--request-timeout", "30", "--workers", "1", "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    summary = json.loads(report.read_text())
    cases, ops = summary["test_cases"], summary["operations"]
    print(f"schemathesis: {ops['tested']}/{ops['total']} operations, {cases}")
    assert ops["tested"] == ops["total"]
    assert cases["generated"] > 0
    assert cases["with_failures"] == 0 and cases["errored"] == 0
