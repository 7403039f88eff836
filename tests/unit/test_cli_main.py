"""The ``visionq`` entry point: parsing, settings errors, models, bench, up's helpers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.main import build_parser, main
from services.cli.supervisor import ChildSpec, Supervisor
from services.cli.up import _probe_url, plan_workers, wait_ready
from services.common.errors import ConfigError
from services.common.redis_server import free_port
from services.common.settings import get_api_settings, get_worker_settings


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_api_settings.cache_clear()
    get_worker_settings.cache_clear()
    yield
    get_api_settings.cache_clear()
    get_worker_settings.cache_clear()


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom services.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'celery' not in sys.modules, 'heavy import'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout and "workers" in result.stdout


def test_module_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "bench", "--concurrency", "0"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "comma list of positive integers" in result.stderr


def test_parser_rejects_bad_device_and_port() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--device", "gpu0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--port", "70000"])
    args = parser.parse_args(["worker", "--device", "cuda:1", "--models", "a, b", "--index", "2"])
    assert (args.device, args.models, args.index) == ("cuda:1", ["a", "b"], 2)


def test_bad_settings_exit_2_with_the_setting_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VISIONQ_MODELS", "Not A Model")
    assert main(["models"]) == 2
    assert "VISIONQ_MODELS" in capsys.readouterr().err


def test_workers_without_gpu_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["workers", "--gpus", "all"]) == 2
    assert "no GPU visible" in capsys.readouterr().err


def test_models_table_with_random_weights(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("models.specs").load_registry  # noqa: B018 - skip until it exists
    monkeypatch.setenv("VISIONQ_ALLOW_RANDOM_WEIGHTS", "1")
    monkeypatch.setenv("VISIONQ_ALLOW_DOWNLOAD", "0")
    monkeypatch.setenv("VISIONQ_MODELS", "resnet18,mobilenet_v3_small")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-visionq-torch-home")
    monkeypatch.delenv("VISIONQ_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("VISIONQ_MODELS_FILE", raising=False)
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["NAME", "TASK", "INPUT", "SERVED", "WEIGHTS"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["resnet18"][1:5] == ["classification", "224x224", "yes", "RANDOM"]
    assert rows["resnet50"][3] == "no"


def test_models_without_weights_lists_every_model_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("models.specs")
    monkeypatch.setenv("VISIONQ_ALLOW_RANDOM_WEIGHTS", "0")
    monkeypatch.setenv("VISIONQ_ALLOW_DOWNLOAD", "0")
    monkeypatch.setenv("VISIONQ_MODELS", "resnet18")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-visionq-torch-home")
    monkeypatch.delenv("VISIONQ_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("VISIONQ_MODELS_FILE", raising=False)
    assert main(["models"]) == 0  # a listing, not a failure
    out = capsys.readouterr().out
    table = out.split("\n\n")[0].splitlines()[1:]
    rows = {line.split()[0]: line.split() for line in table}
    assert len(rows) >= 7  # every built-in model, with its task and input size
    assert rows["resnet18"][1:5] == ["classification", "224x224", "yes", "MISSING"]
    assert "error:" not in out
    fix = next(line for line in out.splitlines() if line.strip().startswith("resnet18:"))
    assert "/nonexistent-visionq-torch-home/hub/checkpoints/resnet18-" in fix
    assert "VISIONQ_WEIGHTS_DIR" in fix


def test_models_names_where_each_source_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("models.specs")
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"x")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "resnet50.pt").write_bytes(b"x")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("VISIONQ_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("VISIONQ_ALLOW_RANDOM_WEIGHTS", "0")
    monkeypatch.delenv("VISIONQ_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("VISIONQ_MODELS_FILE", raising=False)
    assert main(["models"]) == 0
    table = capsys.readouterr().out.split("\n\n")[0].splitlines()[1:]
    rows = {line.split()[0]: line for line in table}
    assert "hub cache " + str(hub / "resnet18-f37072fd.pth") in rows["resnet18"]
    assert "file " + str(tmp_path / "w" / "resnet50.pt") in rows["resnet50"]
    assert "download on first use from https://" in rows["vit_b_16"]
    assert "without network: the worker stops" in rows["vit_b_16"]


def test_plan_workers() -> None:
    assert plan_workers([], None) == [None]
    assert plan_workers([], 3) == [None, None, None]
    assert plan_workers(["0", "1"], None) == ["0", "1"]
    assert plan_workers(["0", "1"], 1) == ["0"]
    with pytest.raises(ConfigError, match="only 2 GPU"):
        plan_workers(["0", "1"], 3)


def test_probe_url_never_targets_a_wildcard() -> None:
    assert _probe_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert _probe_url("::", 81) == "http://[::1]:81"
    assert _probe_url("127.0.0.1", 8001) == "http://127.0.0.1:8001"


def test_wait_ready_reports_a_child_that_died() -> None:
    sup = Supervisor()
    sup.add(ChildSpec("api", [sys.executable, "-c", "raise SystemExit(4)"]))
    try:
        problem = wait_ready(sup, f"http://127.0.0.1:{free_port()}", timeout_s=30)
    finally:
        sup.stop()
    assert problem is not None and "api ended with exit code 4" in problem


def test_wait_ready_gives_up_after_timeout() -> None:
    sup = Supervisor()
    sup.add(ChildSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"]))
    try:
        problem = wait_ready(sup, f"http://127.0.0.1:{free_port()}", timeout_s=0.2)
    finally:
        sup.stop()
    assert problem is not None and "not ready after" in problem and "not answering" in problem
