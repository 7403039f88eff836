"""deploy/k8s and the Dockerfiles: they parse and carry the fields the design relies on.

No cluster and no Docker engine here: these tests read the files; they do not apply them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from services.common.jobs import LANES, queue_name

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def _docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = _docs()


def _of(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in DOCS if d["kind"] == kind}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def test_every_document_has_the_basics_and_is_listed() -> None:
    for doc in DOCS:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_api_redis_and_services() -> None:
    assert {"api", "redis"} <= set(_of("Service"))
    (api,) = _of("Deployment")["api"]["spec"]["template"]["spec"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    redis = _of("StatefulSet")["redis"]["spec"]["template"]["spec"]["containers"][0]
    assert "--appendonly yes" in " ".join(redis["command"])


def test_each_gpu_worker_takes_one_gpu_and_is_scaled_on_its_queue() -> None:
    workers = {n: d for n, d in _of("Deployment").items() if n.startswith("worker-")}
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in _of("ScaledObject").values()}
    auths = set(_of("TriggerAuthentication"))
    assert workers and set(workers) == set(scaled)
    for name, deployment in workers.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        resources = container["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1, name
        assert resources["requests"]["nvidia.com/gpu"] == 1, name
        model = _env(container)["VISIONQ_MODELS"]["value"]
        assert "," not in model, f"{name}: one model per worker Deployment, one queue each"
        triggers = scaled[name]["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"redis"}
        # Every list the API pushes this model's jobs to, as the code names them.
        lists = sorted(t["metadata"]["listName"] for t in triggers)
        assert lists == sorted(queue_name(model, lane) for lane in LANES)
        for trigger in triggers:
            assert int(trigger["metadata"]["listLength"]) >= 1
            assert trigger["authenticationRef"]["name"] in auths
        assert scaled[name]["spec"]["minReplicaCount"] >= 0


def test_secrets_come_from_a_secret_and_pods_are_not_root() -> None:
    for kind in ("Deployment", "StatefulSet"):
        for name, doc in _of(kind).items():
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            for container in pod["containers"]:
                for var, entry in _env(container).items():
                    if "PASSWORD" in var:
                        assert "secretKeyRef" in entry["valueFrom"], f"{name}: {var}"
    for value in re.findall(r"redis://[^\s\"']+", (K8S / "api.yaml").read_text()):
        assert "$(REDIS_PASSWORD)" in value


def _final_user(dockerfile: str) -> str:
    return re.findall(r"^USER\s+(\S+)", dockerfile, re.M)[-1]


def test_dockerfiles_bases_and_users() -> None:
    worker = (ROOT / "deploy" / "Dockerfile.worker").read_text()
    api = (ROOT / "deploy" / "Dockerfile.api").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", worker, re.M)
    assert re.search(r"^FROM python:3\.11-slim", api, re.M)
    for text in (worker, api):
        assert _final_user(text) not in ("root", "0")
    assert "'.[gpu,heif]'" in worker  # nvidia-ml-py (GPU utilisation gauge), pillow-heif (HEIC)
