"""Whoever stops a worker waits for its own worst-case warm shutdown: k8s, compose, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.cli.up import worker_stop_timeout_s
from services.common.settings import WorkerSettings, get_worker_settings
from services.gpu_worker.runtime import EXIT_MARGIN_S
from services.gpu_worker.store import HURRIED_STORE_S

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").rglob("worker-*.yaml"))
DEFAULT_LIMIT = WorkerSettings.model_fields["batch_time_limit_s"].default


def test_every_worker_manifest_is_checked() -> None:
    # The manifests moved once (into base/ and overlays/) and the glob found none.
    assert len(MANIFESTS) >= 2, MANIFESTS


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_grace_period_covers_the_longest_warm_shutdown(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"]
    assert docs, f"{path.name} holds no Deployment"
    for doc in docs:
        pod = doc["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        limit = float(env.get("VISIONQ_BATCH_TIME_LIMIT_S") or DEFAULT_LIMIT)
        # The worker exits by itself at limit + margin; the margin holds the hurried store.
        assert HURRIED_STORE_S < EXIT_MARGIN_S
        assert pod["terminationGracePeriodSeconds"] >= limit + EXIT_MARGIN_S + 5


def test_compose_workers_get_the_same_grace() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    workers = [s for name, s in services.items() if name.startswith("worker")]
    assert workers
    for service in workers:
        limit = float(service["environment"].get("VISIONQ_BATCH_TIME_LIMIT_S", DEFAULT_LIMIT))
        grace = int(service["stop_grace_period"].removesuffix("s"))
        assert grace >= limit + EXIT_MARGIN_S + 5


@pytest.mark.parametrize("limit", ["60", "90"])
def test_visionq_up_and_workers_wait_as_long(limit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`visionq workers` is the command of the gpus-per-node pods: its supervisor used to
    SIGKILL a worker 20 s after SIGTERM, mid-batch."""
    monkeypatch.setenv("VISIONQ_BATCH_TIME_LIMIT_S", limit)
    get_worker_settings.cache_clear()  # read from the environment once, else
    try:
        assert worker_stop_timeout_s() >= float(limit) + EXIT_MARGIN_S + 5
    finally:
        get_worker_settings.cache_clear()
