"""Fuzz the upload route over HTTP: whatever the form holds, the API never answers 5xx."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import IDLE_MODEL
from tests.integration.stack import Stack
from tests.security.conftest import AUTH
from tests.security.fuzzing import random_upload
from tests.security.hostile import BOUNDARY, CONTENT_TYPE, part

pytestmark = pytest.mark.integration

EXAMPLES = 80
REFUSALS = {400, 404, 413, 415, 422}

_names = st.text(st.characters(codec="utf-8", exclude_characters='"\r\n'), max_size=80)
_types = st.sampled_from(["image/jpeg", "image/png", "text/plain", "", "application/x-evil"])
_fields = st.dictionaries(
    st.sampled_from(["top_k", "timeout", "model", "file", "junk"]),
    st.text(max_size=20),
    max_size=3,
)


@pytest.fixture(scope="module")
def http() -> httpx.Client:
    """One connection for all examples: the fuzz measures the API, not TCP set-up."""
    return httpx.Client(timeout=60, headers=AUTH)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    files=st.lists(st.tuples(random_upload(), _names, _types), min_size=0, max_size=3),
    fields=_fields,
)
def test_upload_fuzz_never_5xx(
    secure_stack: Stack,
    http: httpx.Client,
    files: list[tuple[bytes, str, str]],
    fields: dict[str, str],
) -> None:
    # The idle model has no worker: an accepted upload just waits, and is cancelled below.
    body = b"".join(part("file", data, name, ctype) for data, name, ctype in files)
    body += b"".join(part(k, v.encode()) for k, v in {"model": IDLE_MODEL, **fields}.items())
    body += f"--{BOUNDARY}--\r\n".encode()
    resp = http.post(
        f"{secure_stack.url}/v1/jobs", content=body, headers={"content-type": CONTENT_TYPE}
    )
    event(f"status {resp.status_code}")
    assert resp.status_code < 500, resp.text[:300]
    if resp.status_code == 202:
        for job in resp.json()["jobs"]:
            if "job_id" not in job:  # a bad file among good ones: its own error, no job
                assert job["error"]["code"] and job["filename"], job
                continue
            http.delete(f"{secure_stack.url}/v1/jobs/{job['job_id']}")
        return
    assert resp.status_code in REFUSALS, resp.text[:300]
    assert resp.json()["error"]["code"]
