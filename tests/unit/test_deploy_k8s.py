"""deploy/k8s and the Dockerfiles: what Kustomize renders is valid and carries our fields.

Every kustomization (the base and each overlay) is rendered with ``kubectl kustomize``
(offline), and every rendered object of a built-in kind is validated against the
Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships, strictly (unknown fields
are errors). KEDA's ScaledObject and TriggerAuthentication are CRDs: they are checked
against KEDA's CRD schema through ``cloudcoil-models-keda`` (pydantic models generated
from KEDA 2.16's CRDs), plus field checks. No cluster and no Docker engine here: the
tests do not apply anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.jobs import LANES, queue_name
from services.common.settings import ApiSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
VARIANTS = ["", "base", "overlays/per-model", "overlays/gpus-per-node"]
KUBERNETES_VERSION = "1.32.0"  # the kubectl on this kind of machine
CRD_KINDS = {"ScaledObject", "TriggerAuthentication"}

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (kustomize) is not installed"
)


@cache
def render(variant: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize`` renders for one kustomization."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S / variant)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def _of(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def _workers(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {n: d for n, d in _of(docs, "Deployment").items() if n.startswith("worker-")}


def test_every_manifest_file_is_used() -> None:
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        doc = yaml.safe_load(kustomization.read_text())
        listed |= {(kustomization.parent / r).resolve() for r in doc.get("resources", [])}
    on_disk = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk <= listed, sorted(str(p) for p in on_disk - listed)


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_are_valid_kubernetes(variant: str) -> None:
    import kubernetes_validate

    docs = render(variant)
    assert {d["kind"] for d in docs} >= {"Deployment", "StatefulSet", "Service", "ScaledObject"}
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace") == "visionq" or doc["kind"] == "Namespace", name
        if doc["kind"] in CRD_KINDS:
            _validate_keda(doc, name)
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{variant or '.'}: {name}: {exc.message} at {list(exc.path)}")


def _validate_keda(doc: dict[str, Any], name: str) -> None:
    """Check a KEDA object against KEDA's CRD schema, as cloudcoil's generated models carry it.

    The models check types and required fields but ignore unknown ones, so the object must
    also come back unchanged from a round trip: a misspelt field would be dropped.
    """
    from cloudcoil.models.keda import v1alpha1

    assert doc["apiVersion"] == "keda.sh/v1alpha1", name
    model = getattr(v1alpha1, doc["kind"]).model_validate(doc)
    again = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert again == doc, f"{name}: fields KEDA's schema does not know: {again} != {doc}"


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_api_redis_and_services(variant: str) -> None:
    docs = render(variant)
    assert {"api", "redis"} <= set(_of(docs, "Service"))
    (api,) = _of(docs, "Deployment")["api"]["spec"]["template"]["spec"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # /readyz may wait 2 x VISIONQ_REDIS_TIMEOUT_S (2 s) on a slow Redis: not k8s's 1 s.
    assert api["readinessProbe"]["timeoutSeconds"] >= 5
    for worker in _workers(docs).values():
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        # Ready once the model is loaded and warmed, not when the metrics port is bound:
        # every worker's, where a pod runs several (`visionq workers`, one port each).
        probe = container["readinessProbe"]
        ports = [p["containerPort"] for p in container["ports"]]
        if len(ports) == 1:
            assert probe["httpGet"] == {"path": "/readyz", "port": ports[0]}
        else:
            command = " ".join(probe["exec"]["command"])
            assert "/readyz" in command and all(str(port) in command for port in ports)
        assert probe["timeoutSeconds"] >= 5
    redis = _of(docs, "StatefulSet")["redis"]["spec"]["template"]["spec"]["containers"][0]
    assert "--appendonly yes" in " ".join(redis["command"])
    # The API takes jobs for exactly the models some worker Deployment serves.
    served = {
        _env(d["spec"]["template"]["spec"]["containers"][0])["VISIONQ_MODELS"]["value"]
        for d in _workers(docs).values()
    }
    assert set(_env(api)["VISIONQ_MODELS"]["value"].split(",")) == served


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_api_shutdown_fits_in_the_grace_period(variant: str) -> None:
    pod = _of(render(variant), "Deployment")["api"]["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    command = api["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    graceful = int(_env(api)["VISIONQ_GRACEFUL_SHUTDOWN_TIMEOUT_S"]["value"])
    # The kubelet SIGKILLs after the grace period, counted from the start of preStop.
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + graceful + 5
    # Every VISIONQ_ variable the API gets names a setting the API reads.
    for var in _env(api):
        if var.startswith("VISIONQ_"):
            assert var.removeprefix("VISIONQ_").lower() in ApiSettings.model_fields, var


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_worker_is_scaled_on_its_own_queues(variant: str) -> None:
    docs = render(variant)
    workers = _workers(docs)
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in _of(docs, "ScaledObject").values()}
    auths = set(_of(docs, "TriggerAuthentication"))
    assert workers and set(workers) == set(scaled)
    batch_limit = WorkerSettings.model_fields["batch_time_limit_s"].default
    for name, deployment in workers.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus, name
        command = container["command"]
        if gpus == 1:
            assert command[:2] == ["visionq", "worker"], name
        else:  # one pinned worker process per GPU of the pod, each on its metrics port
            assert command[:2] == ["visionq", "workers"], name
            assert command[command.index("--gpus") + 1].split(",") == [str(i) for i in range(gpus)]
            ports = sorted(p["containerPort"] for p in container["ports"])
            assert ports == [18100 + i for i in range(gpus)], name
        model = _env(container)["VISIONQ_MODELS"]["value"]
        assert "," not in model, f"{name}: one model per worker Deployment, one queue each"
        spec = scaled[name]["spec"]
        triggers = spec["triggers"]
        assert {t["type"] for t in triggers} == {"redis"}
        # Every list the API pushes this model's jobs to, as the code names them.
        lists = sorted(t["metadata"]["listName"] for t in triggers)
        assert lists == sorted(queue_name(model, lane) for lane in LANES)
        for trigger in triggers:
            meta = trigger["metadata"]
            # Scaled per GPU: at least one full batch waiting per GPU before another pod.
            assert int(meta["listLength"]) >= 32 * gpus, name
            assert int(meta["activationListLength"]) >= 0  # the threshold to leave zero
            assert trigger["authenticationRef"]["name"] in auths
        assert spec["minReplicaCount"] in (0, 1)
        assert spec["maxReplicaCount"] >= max(1, spec["minReplicaCount"])
        # Neither scale-to-zero nor scale-down removes a pod between two batches.
        assert spec["cooldownPeriod"] > 2 * batch_limit
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] > 2 * batch_limit
        # A pod told to stop finishes its batch first.
        assert pod["terminationGracePeriodSeconds"] >= batch_limit


@needs_kubectl
def test_the_overlays_change_what_they_say() -> None:
    base = render("base")
    assert render("") == base  # `kubectl apply -k deploy/k8s` is the base
    per_model = _workers(render("overlays/per-model"))
    assert set(per_model) == set(_workers(base)) | {"worker-resnet50"}
    # The example of a rarely used model scales to zero (documented with its cold start).
    resnet = _of(render("overlays/per-model"), "ScaledObject")["worker-resnet50"]
    assert resnet["spec"]["minReplicaCount"] == 0
    for deployment in _workers(render("overlays/gpus-per-node")).values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_secrets_come_from_a_secret_and_pods_are_not_root(variant: str) -> None:
    docs = render(variant)
    for kind in ("Deployment", "StatefulSet"):
        for name, doc in _of(docs, kind).items():
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            for container in pod["containers"]:
                for var, entry in _env(container).items():
                    if "PASSWORD" in var:
                        assert "secretKeyRef" in entry["valueFrom"], f"{name}: {var}"
                    if "redis://" in str(entry.get("value", "")):
                        assert "$(REDIS_PASSWORD)" in entry["value"], f"{name}: {var}"


def _final_user(dockerfile: str) -> str:
    return re.findall(r"^USER\s+(\S+)", dockerfile, re.M)[-1]


def test_dockerfiles_bases_and_users() -> None:
    worker = (ROOT / "deploy" / "Dockerfile.worker").read_text()
    api = (ROOT / "deploy" / "Dockerfile.api").read_text()
    # The worker: a Python base; CUDA comes with the PyPI torch wheels, not a CUDA image.
    assert re.search(r"^FROM python:3\.11-slim", worker, re.M)
    assert not re.search(r"^FROM nvidia/", worker, re.M)
    assert re.search(r"apt-get install .*\bgcc\b", worker)  # Triton compiles at run time
    assert "580" in worker  # the driver the CUDA 13.0 wheels need is stated
    assert re.search(r"^FROM python:3\.11-slim", api, re.M)
    for text in (worker, api):
        assert _final_user(text) not in ("root", "0")
    # torch from the worker extra; nvidia-ml-py (GPU utilisation gauge), pillow-heif (HEIC),
    # tracing on demand. The API image installs only its role, so it carries no torch.
    assert "'.[worker,gpu,heif,otel]'" in worker
    assert "'.[api,heif,otel]'" in api and "torch" not in api
    assert "EXPOSE 18100" in worker


@needs_kubectl
def test_the_schema_check_catches_a_planted_mistake() -> None:
    import copy

    import kubernetes_validate

    deployment = copy.deepcopy(next(iter(_workers(render("base")).values())))
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limitz"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="limitz"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    scaled = copy.deepcopy(next(iter(_of(render("base"), "ScaledObject").values())))
    scaled["spec"]["cooldownPeriods"] = 300
    with pytest.raises(AssertionError, match="cooldownPeriods"):
        _validate_keda(scaled, "planted")
    scaled = copy.deepcopy(next(iter(_of(render("base"), "ScaledObject").values())))
    scaled["spec"]["minReplicaCount"] = "one"
    with pytest.raises(ValueError, match="minReplicaCount"):
        _validate_keda(scaled, "planted")
