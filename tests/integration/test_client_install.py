"""A client-only install: the built wheel in a fresh venv, base dependencies only.

`pip install visionq` is the client role: it must not bring torch or the server stack, and
`visionq predict` and `services.client` must work with what it brings. The proof builds the
wheel from this tree, installs it into a new venv with ``pip install --no-index
--find-links`` from a wheelhouse holding only the base dependencies (downloaded from the
package index once, then pip's cache), and classifies an image on the real stack with the
venv's own `visionq predict`. About 20 s; skipped, with the reason, when the package index
cannot be reached.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.stack import ROOT, Stack

pytestmark = pytest.mark.integration

# Packages of the server roles: none may be a base requirement, none may be importable.
SERVER_PACKAGES = ("torch", "torchvision", "fastapi", "uvicorn", "celery", "numpy", "PIL")


def _run(
    cmd: list[str], cwd: Path, timeout: float = 300, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.update(extra)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _build_wheel(tmp: Path) -> Path:
    """The wheel of this tree, built from a copy so the worktree gets no build/ folder."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for package in ("services", "models"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    # The test venv's setuptools builds it: no download, and its warnings are ours to see.
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
           "-w", str(tmp / "dist"), str(src)]  # fmt: skip
    built = _run(cmd, tmp)
    assert built.returncode == 0, built.stdout + built.stderr
    # PEP 639 metadata: the old license table printed a deprecation warning per build.
    assert "deprecat" not in (built.stdout + built.stderr).lower(), built.stdout + built.stderr
    (wheel,) = (tmp / "dist").glob("visionq-*.whl")
    return wheel


def _base_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(name).decode()
    assert "License-Expression: Apache-2.0" in meta
    reqs = [
        line.split(":", 1)[1].strip()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    return [r for r in reqs if "extra ==" not in r]


def test_client_only_install_predicts_without_torch(stack: Stack, tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    base = _base_requirements(wheel)
    names = {r.split("==")[0].split("[")[0].strip().lower() for r in base}
    assert names == {"httpx", "rich"}, base
    # Only the base dependencies go in the wheelhouse, so the fresh venv cannot find torch.
    house = tmp_path / "wheelhouse"
    fetched = _run([sys.executable, "-m", "pip", "download", "--only-binary=:all:",
                    "-d", str(house), *base], tmp_path)  # fmt: skip
    if fetched.returncode != 0:
        pytest.skip(f"the package index is not reachable: {fetched.stderr.strip()[-300:]}")
    assert not [p.name for p in house.iterdir() if p.name.lower().startswith(("torch", "fastapi"))]

    env_dir = tmp_path / "client-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    cmd = [str(py), "-m", "pip", "install", "--no-index", "--find-links", str(house), str(wheel)]
    # No pip configuration either: the wheelhouse is the only place it may look.
    installed = _run(cmd, tmp_path, PIP_CONFIG_FILE="/dev/null")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "deprecat" not in (installed.stdout + installed.stderr).lower(), installed.stderr

    probe = (
        "import importlib.util, json, sys\n"
        "import services.client, services.cli.main\n"
        "services.cli.main.build_parser()\n"
        f"absent = [m for m in {SERVER_PACKAGES!r} if importlib.util.find_spec(m) is None]\n"
        "print(json.dumps({'absent': absent, 'typed': importlib.util.find_spec('services')"
        ".submodule_search_locations[0]}))\n"
    )
    probed = _run([str(py), "-c", probe], tmp_path)
    assert probed.returncode == 0, probed.stderr
    facts = json.loads(probed.stdout)
    assert facts["absent"] == list(SERVER_PACKAGES)  # none of them is even installed
    assert (Path(facts["typed"]) / "py.typed").is_file()

    helped = _run([str(bin_dir / "visionq"), "predict", "--help"], tmp_path)
    assert helped.returncode == 0 and "--top-k" in helped.stdout, helped.stderr
    # A server command says which extra it needs instead of a traceback.
    up = _run([str(bin_dir / "visionq"), "up"], tmp_path)
    assert up.returncode == 2 and "pip install 'visionq[" in up.stderr, up.stderr

    (tmp_path / "cat.jpg").write_bytes(jpeg(5, (64, 64)))
    out = tmp_path / "out.jsonl"
    cmd = [str(bin_dir / "visionq"), "predict", "cat.jpg", "--url", stack.url,
           "--model", TEST_MODEL, "--top-k", "2", "--out", str(out)]  # fmt: skip
    done = _run(cmd, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert record["filename"] == "cat.jpg" and len(record["top_k"]) == 2
