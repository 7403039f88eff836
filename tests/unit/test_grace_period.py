"""The worker manifests' grace period covers the worker's own worst-case warm shutdown."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.common.settings import WorkerSettings
from services.gpu_worker.runtime import EXIT_MARGIN_S
from services.gpu_worker.store import HURRIED_STORE_S

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("worker-*.yaml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_grace_period_covers_the_longest_warm_shutdown(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"]
    assert docs, f"{path.name} holds no Deployment"
    for doc in docs:
        pod = doc["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        limit = float(env.get("VISIONQ_BATCH_TIME_LIMIT_S") or
                      WorkerSettings.model_fields["batch_time_limit_s"].default)  # fmt: skip
        # The worker exits by itself at limit + margin; the margin holds the hurried store.
        assert HURRIED_STORE_S < EXIT_MARGIN_S
        assert pod["terminationGracePeriodSeconds"] >= limit + EXIT_MARGIN_S + 5
