"""promtool on the shipped config and rules, rule unit tests, and the Grafana provisioning."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="no `promtool` on the PATH (Debian: apt-get install prometheus)",
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_check_config_and_rules() -> None:
    config = _promtool("check", "config", str(PROM / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _promtool("check", "rules", str(PROM / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def _case(series: dict[str, str], alert: str, at: str, fires: list[dict[str, str]]) -> Any:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": f} for f in fires]}
        ],
    }


_ERRORS = {
    'visionq_jobs_completed_total{model="m",device="cuda:0",outcome="succeeded"}': "0+90x40",
    'visionq_jobs_completed_total{model="m",device="cuda:0",outcome="invalid_image"}': "0+10x40",
}
_FEW_ERRORS = {**_ERRORS}
_FEW_ERRORS['visionq_jobs_completed_total{model="m",device="cuda:0",outcome="invalid_image"}'] = (
    "0+1x40"
)
_SLOW = {
    f'visionq_job_latency_seconds_bucket{{model="m",le="{le}"}}': v
    for le, v in (("1", "0x40"), ("10", "0+1x40"), ("30", "0+100x40"), ("+Inf", "0+100x40"))
}
# Each case: the series, the alert, when, and the labels it must fire with ([] = silent).
CASES = [
    _case({'visionq_live_workers{model="m"}': "0x10"}, "VisionqNoLiveWorker", "5m",
          [{"severity": "critical", "model": "m"}]),
    _case({'visionq_live_workers{model="m"}': "1x10"}, "VisionqNoLiveWorker", "5m", []),
    _case({'visionq_queue_depth{model="m"}': "0+20x20"}, "VisionqQueueGrowing", "12m",
          [{"severity": "warning", "model": "m"}]),
    _case({'visionq_queue_depth{model="m"}': "50x20"}, "VisionqQueueGrowing", "12m", []),
    _case({'visionq_queue_depth{model="m"}': "0+20x3 0x17"}, "VisionqQueueGrowing", "12m", []),
    _case(_ERRORS, "VisionqErrorRatioHigh", "20m", [{"severity": "warning", "model": "m"}]),
    _case(_FEW_ERRORS, "VisionqErrorRatioHigh", "20m", []),
    _case(_SLOW, "VisionqJobLatencyHigh", "20m", [{"severity": "warning", "model": "m"}]),
    _case({'visionq_oom_total{device="cuda:1"}': "0 0 1 2 3 4 4 4"}, "VisionqRepeatedOOM", "6m",
          [{"severity": "warning", "device": "cuda:1"}]),
    _case({'visionq_oom_total{device="cuda:1"}': "0 0 1 1 1 1 1 1"}, "VisionqRepeatedOOM", "6m",
          []),
]  # fmt: skip


def _without_annotations(doc: dict[str, Any]) -> dict[str, Any]:
    # promtool compares annotations too; the tests are about when and for what rules fire.
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return doc


@needs_promtool
def test_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    rules = _without_annotations(yaml.safe_load((PROM / "alerts.yml").read_text()))
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": CASES}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(spec))
    result = _promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_required_alert_exists() -> None:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    names = {r["alert"] for g in doc["groups"] for r in g["rules"]}
    required = {"VisionqNoLiveWorker", "VisionqQueueGrowing", "VisionqJobLatencyHigh"}
    assert required | {"VisionqErrorRatioHigh", "VisionqRepeatedOOM"} <= names


def _dashboards() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))]


def test_grafana_provisioning_points_at_the_dashboards_and_datasource() -> None:
    (source,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/visionq.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboards = _dashboards()
    assert dashboards
    for dash in dashboards:
        # The data source is a variable: provisioning selects ours by its uid, an import into
        # another Grafana offers that Grafana's Prometheus data sources instead.
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        chooser = variables["datasource"]
        assert (chooser["type"], chooser["query"]) == ("datasource", "prometheus")
        assert chooser["current"]["value"] == source["uid"]
        assert variables["model"]["datasource"]["uid"] == "${datasource}"
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        # No panel or query is tied to one Grafana's data source any more.
        assert source["uid"] not in json.dumps({k: v for k, v in dash.items() if k != "templating"})


def test_dashboard_has_the_required_panels() -> None:
    titles = {p["title"] for d in _dashboards() for p in d["panels"]}
    required = {
        "Throughput per model and device",
        "Queue depth",
        "Job latency p50 / p90 / p99",
        "Queue wait vs inference time",
        "Batch size distribution",
        "Mean batch size and fill",
        "Errors by reason",
        "GPU memory allocated",
        "GPU utilisation",
        "Workers up",
    }
    assert required <= titles
    ids = [p["id"] for d in _dashboards() for p in d["panels"]]
    assert len(ids) == len(set(ids))
