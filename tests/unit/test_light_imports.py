"""The client and the CLI's parser import nothing of the server roles.

A client-only install (`pip install visionq`) has no torch, FastAPI, Celery, numpy or
Pillow: importing ``services.client`` or building ``visionq``'s parser must not need them.
Here they are installed, so the check is what a fresh interpreter loaded; the wheel in a
fresh venv is tests/integration/test_client_install.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.stack import ROOT

HEAVY = ("torch", "torchvision", "fastapi", "starlette", "uvicorn", "celery", "kombu",
         "redis", "numpy", "PIL", "pydantic", "pydantic_settings", "matplotlib")  # fmt: skip

_PROBE = """
import json, sys
import services.client
import services.cli.main
services.cli.main.build_parser().parse_args(["predict", "x.jpg"])
import services.cli.predict
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_client_and_cli_parser_load_no_server_package() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
