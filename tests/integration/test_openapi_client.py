"""A client generated from the live /openapi.json by openapi-python-client calls predict.

If the schema were hand-written or untyped, the generated client would return untyped
dicts or nothing at all; here it must return a typed PredictResponse whose top-k it can read,
a typed ErrorBody for a refused upload, and a typed model list.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

GENERATOR = Path(sys.executable).parent / "openapi-python-client"

# Runs in a fresh interpreter with only the generated package on the path.
_SCRIPT = """
import json, sys
from io import BytesIO
from pathlib import Path

from visionq_client import AuthenticatedClient
from visionq_client.api.inference import predict
from visionq_client.api.models import list_models
from visionq_client.models import ErrorBody, ModelList, PredictBody, PredictResponse
from visionq_client.types import File

url, model, image = sys.argv[1], sys.argv[2], Path(sys.argv[3]).read_bytes()
client = AuthenticatedClient(base_url=url, token="no-keys-on-this-stack", timeout=120.0)
models = list_models.sync(client=client)
assert isinstance(models, ModelList), models
body = PredictBody(
    file=[File(payload=BytesIO(image), file_name="cat.jpg", mime_type="image/jpeg")],
    model=model,
    top_k=3,
)
answer = predict.sync(client=client, body=body)
assert isinstance(answer, PredictResponse), answer
(first,) = answer.predictions
refused = predict.sync(
    client=client,
    body=PredictBody(file=[File(payload=BytesIO(b"plain text"), file_name="notes.txt")]),
)
assert isinstance(refused, ErrorBody), refused
print(json.dumps({
    "models": [m.name for m in models.models],
    "model": answer.model,
    "filename": first.filename,
    "top_k": [[t.label, t.index, t.score] for t in first.top_k],
    "batch_size": first.timings.batch_size,
    "refused": refused.error.code,
}))
"""


def test_generated_client_predicts(stack: Stack, tmp_path: Path) -> None:
    if not GENERATOR.exists():
        pytest.skip("openapi-python-client is not installed (the dev extra pins it)")
    spec = tmp_path / "openapi.json"
    spec.write_bytes(httpx.get(f"{stack.url}/openapi.json", timeout=30).content)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"post_hooks": [], "package_name_override": "visionq_client"}))
    generated = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(spec), "--meta", "none",
         "--config", str(config), "--output-path", str(tmp_path / "visionq_client")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    image = tmp_path / "cat.jpg"
    image.write_bytes(jpeg(7, (64, 64)))
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT, stack.url, TEST_MODEL, str(image)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = json.loads(run.stdout)
    assert TEST_MODEL in out["models"]
    assert out["model"] == TEST_MODEL and out["filename"] == "cat.jpg"
    assert len(out["top_k"]) == 3
    scores = [score for _, _, score in out["top_k"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert out["batch_size"] >= 1
    assert out["refused"] == "unsupported_media_type"
