"""GPU discovery without CUDA: environment, a fake /proc, a fake nvidia-smi."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.cli import gpus
from services.cli.gpus import parse_gpu_arg, visible_gpus
from services.common.errors import ConfigError


@pytest.fixture
def no_gpu_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CUDA_VISIBLE_DEVICES, an absent /proc dir, no nvidia-smi on PATH."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpus, "PROC_GPUS_DIR", tmp_path / "proc" / "gpus")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    (tmp_path / "bin").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", []),
        ("-1", []),
        ("0", ["0"]),
        ("0,2", ["0", "2"]),
        (" 1 , 3 ", ["1", "3"]),
        ("1,-1,2", ["1"]),
        ("GPU-aaaa,GPU-bbbb", ["GPU-aaaa", "GPU-bbbb"]),
    ],
)
def test_cuda_visible_devices_wins(
    no_gpu_sources: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    proc = no_gpu_sources / "proc" / "gpus"
    (proc / "0000:01:00.0").mkdir(parents=True)  # ignored: the variable says otherwise
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpus() == expected


def test_counts_proc_entries(no_gpu_sources: Path) -> None:
    proc = no_gpu_sources / "proc" / "gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (proc / bus).mkdir(parents=True)
    assert visible_gpus() == ["0", "1", "2"]


def test_nothing_found_is_empty(no_gpu_sources: Path) -> None:
    assert visible_gpus() == []


def test_nvidia_smi_fallback(no_gpu_sources: Path) -> None:
    smi = no_gpu_sources / "bin" / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'echo "GPU 0: NVIDIA H100 (UUID: GPU-1111)"\n'
        'echo "GPU 1: NVIDIA H100 (UUID: GPU-2222)"\n'
    )
    smi.chmod(0o755)
    assert visible_gpus() == ["0", "1"]


def test_failing_nvidia_smi_means_none(no_gpu_sources: Path) -> None:
    smi = no_gpu_sources / "bin" / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "GPU 0: x"\nexit 9\n')
    smi.chmod(0o755)
    assert visible_gpus() == []
    assert os.access(smi, os.X_OK)


def test_parse_all_and_subset() -> None:
    assert parse_gpu_arg("all", ["0", "1", "2"]) == ["0", "1", "2"]
    assert parse_gpu_arg("0,2", ["0", "1", "2"]) == ["0", "2"]
    assert parse_gpu_arg("GPU-b", ["GPU-a", "GPU-b"]) == ["GPU-b"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("5", "'5' is not visible; visible GPUs: 0, 1"), ("0,0", "named twice"), ("0,", "empty")],
)
def test_parse_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_gpu_arg(spec, ["0", "1"])


def test_parse_without_gpus_says_so() -> None:
    with pytest.raises(ConfigError, match="no GPU visible"):
        parse_gpu_arg("all", [])
