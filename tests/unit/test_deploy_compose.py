"""docker-compose.gpu.yml: the generator's output, one GPU per worker, env from outside.

No Docker engine here: these tests parse the file; they do not prove it starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli.compose import (
    METRICS_BASE_PORT,
    WORKER_TARGETS,
    compose_services,
    render_compose,
    render_targets,
)
from services.cli.main import main
from services.common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.gpu.yml"
TEXT = COMPOSE.read_text()
DOC: dict[str, Any] = yaml.safe_load(TEXT)
SERVICES: dict[str, Any] = DOC["services"]
WORKERS = sorted(name for name in SERVICES if name.startswith("worker-"))
STATED_GPUS = int(re.search(r"visionq compose --gpus (\d+)", TEXT).group(1))  # type: ignore[union-attr]


def _strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_committed_file_is_the_generators_output() -> None:
    assert render_compose(STATED_GPUS) == TEXT
    assert render_targets(STATED_GPUS) == (ROOT / WORKER_TARGETS).read_text()


def test_has_every_service_and_each_a_healthcheck() -> None:
    expected = {"redis", "api", "prometheus", "grafana", "flower"}
    assert set(SERVICES) == expected | {f"worker-gpu{i}" for i in range(STATED_GPUS)}
    for name, service in SERVICES.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    assert any("/readyz" in part for part in SERVICES["api"]["healthcheck"]["test"])


def test_api_stop_grace_covers_its_graceful_shutdown() -> None:
    api = SERVICES["api"]
    graceful = int(api["environment"]["VISIONQ_GRACEFUL_SHUTDOWN_TIMEOUT_S"])
    # docker stop sends SIGKILL after stop_grace_period (10 s when unset).
    assert int(api["stop_grace_period"].removesuffix("s")) >= graceful + 5


def test_each_worker_reserves_exactly_its_own_gpu() -> None:
    seen = []
    for name in WORKERS:
        worker = SERVICES[name]
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, name
        assert devices[0]["capabilities"] == ["gpu"]
        (gpu,) = devices[0]["device_ids"]
        seen.append(gpu)
        command = worker["command"]
        # Labelled with the host's GPU number; inside, that GPU is the only one visible.
        assert command[command.index("--device") + 1] == f"cuda:{gpu}"
        assert command[command.index("--index") + 1] == gpu
        assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
        port = METRICS_BASE_PORT + int(gpu)
        assert f":{port}/readyz" in " ".join(worker["healthcheck"]["test"])
    assert seen == [str(i) for i in range(STATED_GPUS)]


def test_prometheus_targets_match_the_worker_ports() -> None:
    entries = yaml.safe_load((ROOT / WORKER_TARGETS).read_text())
    targets = [t for entry in entries for t in entry["targets"]]
    expected = [f"worker-gpu{i}:{METRICS_BASE_PORT + i}" for i in range(STATED_GPUS)]
    assert targets == expected
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    files = [f for job in scrape["scrape_configs"] for sd in job.get("file_sd_configs", [])
             for f in sd["files"]]  # fmt: skip
    assert files == [str(WORKER_TARGETS.relative_to("deploy/prometheus"))]


def test_settings_and_secrets_come_from_the_environment() -> None:
    for name in ["api", *WORKERS]:
        env = SERVICES[name]["environment"]
        assert "${REDIS_PASSWORD:?" in env["VISIONQ_REDIS_URL"], name
        assert env["VISIONQ_MODELS"].startswith("${VISIONQ_MODELS"), name
    for value in _strings(DOC):
        for secret in ("PASSWORD", "BASIC_AUTH"):
            # A secret is either required from the environment or only referenced ($$ in a
            # container's shell); never a literal.
            for match in re.finditer(rf"\$\{{(\w*{secret}\w*)(:?[^}}]*)\}}", value):
                assert match.group(2).startswith(":?"), f"{match.group(0)} has a default"
    grafana_env = SERVICES["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_redis_persists_and_requires_the_password() -> None:
    command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in command
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    assert any(v.endswith(":/data") for v in SERVICES["redis"]["volumes"])


def test_mounted_config_exists_in_the_repository() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_dir(), f"{name} mounts missing {source}"
    assert "./deploy/grafana/provisioning" in " ".join(SERVICES["grafana"]["volumes"])


def test_generator_scales_with_the_gpu_count() -> None:
    services = compose_services(4)["services"]
    ids = [
        services[f"worker-gpu{i}"]["deploy"]["resources"]["reservations"]["devices"][0][
            "device_ids"
        ]
        for i in range(4)
    ]
    assert ids == [["0"], ["1"], ["2"], ["3"]]
    assert "worker-gpu4" not in services
    with pytest.raises(ConfigError):
        compose_services(0)


def test_compose_command_writes_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "compose.yml"
    assert main(["compose", "--gpus", "3", "--out", str(out), "--no-targets"]) == 0
    assert out.read_text() == render_compose(3)
    assert "wrote" in capsys.readouterr().out


def test_flower_sees_the_workers_it_is_shipped_with() -> None:
    import importlib

    # Flower is built on worker heartbeats and task events: every worker sends them.
    for name in WORKERS:
        assert SERVICES[name]["environment"]["VISIONQ_CELERY_EVENTS"] == "1", name
    flower = SERVICES["flower"]
    command = flower["command"]
    assert command[:3] == ["celery", "-A", "services.common.celery_app"]
    # The app named by -A is the workers' own (same transport options), and it loads.
    module = importlib.import_module(command[2])
    assert module.app.main == "visionq"
    # Compose refuses to start without Flower's credentials.
    assert ":?" in flower["environment"]["FLOWER_BASIC_AUTH"]
