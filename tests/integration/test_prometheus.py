"""Proof against a real Prometheus: the shipped scrape config, alert rules and dashboard work.

A real redis-server, the real API (two uvicorn processes sharing metrics) and one real CPU
worker run as subprocesses; a real ``prometheus`` scrapes them every second with a config
rendered from deploy/prometheus/prometheus.yml (same jobs and rules, targets rewritten to
the test ports). After some traffic, including failing inputs, every PromQL expression of
the dashboard and the alert rules is evaluated through the HTTP API.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.common.redis_server import RedisServer, free_port
from tests.conftest import IDLE_MODEL, TEST_MODEL, TINY_MODEL
from tests.images import jpeg
from tests.integration.conftest import stack_env
from tests.integration.helpers import files, predict, submit
from tests.integration.stack import ROOT, Stack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="no `prometheus` binary on the PATH (Debian: apt-get install prometheus)",
    ),
]

PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
# What Grafana puts in place of its variables: every model, and a window that holds the
# whole test's traffic at a 1 s scrape interval.
GRAFANA_VARS = {"$__rate_interval": "1m", "$model": ".*"}
# Series that exist only on a GPU; this stack runs on the CPU, where they must be absent.
GPU_ONLY = re.compile(r"visionq_gpu_\w+")
HEALTHZ_CALLS = 30


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables substituted) for every dashboard target."""
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, f"{panel['title']}: unknown Grafana variable in {expr}"
                out.append((panel["title"], expr))
    return out


def alert_rules() -> list[tuple[str, str]]:
    """(alert name, expression) of every rule in alerts.yml."""
    doc = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def render_config(tmp: Path, targets: dict[str, str]) -> Path:
    """The shipped prometheus.yml with a 1 s interval and each job pointed at ``targets``."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(PROM_DIR / rule) for rule in cfg["rule_files"]]
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    assert set(jobs) == set(targets), "a job was added or renamed: point this test at it"
    for name, job in jobs.items():
        if "file_sd_configs" in job:
            sd_file = tmp / f"{name}.yml"
            sd_file.write_text(yaml.safe_dump([{"targets": [targets[name]]}]))
            job["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "1s"}]
        else:
            job["static_configs"] = [{"targets": [targets[name]]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Prometheus:
    """A real prometheus process on a free loopback port, ended by its PID."""

    def __init__(self, config: Path, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_until(self, what: str, ok: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
            try:
                if ok():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"prometheus: timed out waiting for {what}")

    def api(self, path: str, **params: str) -> Any:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert resp["status"] == "success", f"does not evaluate: {expr}\n{resp.get('error')}"
        result: list[dict[str, Any]] = resp["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def observed(
    models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Prometheus, Stack]]:
    """The stack under traffic, scraped by a real Prometheus for a few seconds."""
    tmp = tmp_path_factory.mktemp("prometheus")
    server = RedisServer(port=0).start()
    stack = Stack(server.url, tmp, stack_env(models_file, VISIONQ_QUEUE_MAX_DEPTH="3"))
    prom: Prometheus | None = None
    try:
        metrics_dir = tmp / "api-metrics"
        metrics_dir.mkdir()
        _plant_stale_counter(metrics_dir)
        stack.api_port = free_port()
        api = stack._spawn(
            "api",
            ["api", "--host", "127.0.0.1", "--port", str(stack.api_port), "--workers", "2"],
            {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        )
        worker_port = free_port()
        stack.start_worker(
            models=TEST_MODEL,
            extra={"VISIONQ_METRICS_PORT": str(worker_port), "VISIONQ_METRICS_HOST": "127.0.0.1"},
        )
        stack.wait_ready([api, *stack.procs])
        targets = {"visionq-api": f"127.0.0.1:{stack.api_port}"}
        targets["visionq-worker"] = f"127.0.0.1:{worker_port}"
        prom = Prometheus(render_config(tmp, targets), tmp)
        prom.wait_until("both targets up", lambda: _targets_up(prom) == 2)
        _drive_traffic(stack, prom)
        yield prom, stack
    finally:
        if prom is not None:
            prom.stop()
        stack.stop_all()
        server.stop()


def _plant_stale_counter(folder: Path) -> None:
    # What a previous run would have left: the API must wipe it before it starts.
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    key = mmap_key(
        "visionq_http_requests",  # a counter's family name, as prometheus-client writes it
        "visionq_http_requests_total",
        ["route", "method", "status"],
        ["/healthz", "GET", "200"],
        "HTTP requests",
    )
    stale = MmapedDict(str(folder / "counter_999999.db"))
    stale.write_value(key, 1000.0, 0.0)
    stale.close()


def _targets_up(prom: Prometheus) -> int:
    active = prom.api("targets")["activeTargets"]
    return sum(1 for t in active if t["health"] == "up")


def _drive_traffic(stack: Stack, prom: Prometheus) -> None:
    corrupt = bytearray(jpeg(12))
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 500] = b"\xff" * 500
    for _ in range(HEALTHZ_CALLS):
        # A new connection each time, so both API processes get some of them.
        assert httpx.get(f"{stack.url}/healthz", timeout=10).status_code == 200
    # Three rounds a few scrapes apart, so every rate() has samples before and after a rise.
    for round_ in range(3):
        ok = predict(stack.url, files(*[(f"{i}.jpg", jpeg(round_ * 10 + i)) for i in range(3)]))
        assert ok.status_code == 200, ok.text
        bad = predict(stack.url, files(("corrupt.jpg", bytes(corrupt))))
        assert bad.status_code == 400, bad.text  # fails in the worker: invalid_image
        assert predict(stack.url, files(("x.txt", b"not an image"))).status_code == 415
        time.sleep(1.5)
    # The idle model has no worker: its queue fills to the limit and the next submit is refused.
    submit(
        stack.url, files(*[(f"q{i}.jpg", jpeg(i, (64, 64))) for i in range(3)]), model=IDLE_MODEL
    )
    refused = predict(stack.url, files(("q.jpg", jpeg(9, (64, 64)))), model=IDLE_MODEL)
    assert refused.status_code == 429
    time.sleep(2.5)  # two more scrapes after the last request
    prom.wait_until("the refusal scraped", lambda: prom.query("visionq_jobs_rejected_total") != [])


def _finite(series: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in series)


@pytest.mark.parametrize(("panel", "expr"), dashboard_queries(), ids=lambda v: str(v)[:60])
def test_dashboard_query_returns_data(
    observed: tuple[Prometheus, Stack], panel: str, expr: str
) -> None:
    prom, _ = observed
    series = prom.query(expr)
    if GPU_ONLY.search(expr):
        # CPU-only stack: the GPU series must be absent (not fake zeros); on a GPU host the
        # gpu tests cover the sampler. The query still has to parse, checked above.
        assert series == [], f"{panel}: GPU series on a CPU worker: {series}"
        return
    assert series, f"{panel}: no series for {expr}"
    assert _finite(series), f"{panel}: only NaN/Inf for {expr}: {series}"


def test_alert_rules_evaluate_and_fire_for_unserved_models(
    observed: tuple[Prometheus, Stack],
) -> None:
    prom, _ = observed
    results = {name: prom.query(expr) for name, expr in alert_rules()}
    # The API serves three models; the one worker serves only TEST_MODEL.
    unserved = {s["metric"]["model"] for s in results["VisionqNoLiveWorker"]}
    assert unserved == {IDLE_MODEL, TINY_MODEL}
    assert results["VisionqTargetDown"] == []
    assert results["VisionqRepeatedOOM"] == []
    # Prometheus itself evaluated every loaded rule without error.
    groups = prom.api("rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == set(results)
    assert {n: r["health"] for n, r in loaded.items()} == dict.fromkeys(results, "ok")


def test_grafana_model_variable_lists_the_models(observed: tuple[Prometheus, Stack]) -> None:
    prom, _ = observed
    # label_values(visionq_queue_depth, model) is this call in Grafana's Prometheus plugin.
    models = prom.api("label/model/values", **{"match[]": "visionq_queue_depth"})
    assert {TEST_MODEL, IDLE_MODEL} <= set(models)


def test_api_processes_share_one_count(observed: tuple[Prometheus, Stack]) -> None:
    prom, stack = observed
    expr = 'sum(visionq_http_requests_total{route="/healthz",status="200"})'
    # Every call counted once whichever process served it; the stale file's 1000 is gone.
    assert float(prom.query(expr)[0]["value"][1]) == HEALTHZ_CALLS
    per_process = _healthz_counts(stack.tmp / "api-metrics")
    assert "counter_999999.db" not in per_process
    assert sum(per_process.values()) == HEALTHZ_CALLS
    assert len([n for n in per_process.values() if n]) >= 2, (
        f"one process served all: {per_process}"
    )


def _healthz_counts(folder: Path) -> dict[str, float]:
    from prometheus_client.mmap_dict import MmapedDict

    counts = {}
    for path in folder.glob("counter_*.db"):
        counts[path.name] = 0.0
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)
            if sample == "visionq_http_requests_total" and labels["route"] == "/healthz":
                counts[path.name] += value
    return counts
