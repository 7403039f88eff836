"""The API's exposition: scrape-time gauges, and counters merged across uvicorn processes."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from services.api.metrics import render_metrics


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_queue_depth_and_live_workers_are_the_values_read_now() -> None:
    samples = _samples(render_metrics({"a": 7, "b": 0}, {"a": 2, "b": 0}))
    assert samples[("visionq_queue_depth", (("model", "a"),))] == 7
    assert samples[("visionq_queue_depth", (("model", "b"),))] == 0
    assert samples[("visionq_live_workers", (("model", "a"),))] == 2
    # A later scrape with other numbers shows those, nothing kept from before.
    again = _samples(render_metrics({"a": 1}, {"a": 1}))
    assert again[("visionq_queue_depth", (("model", "a"),))] == 1
    assert ("visionq_queue_depth", (("model", "b"),)) not in again


def test_redis_away_means_absent_not_zero() -> None:
    text = render_metrics(None, None).decode()
    assert "visionq_queue_depth" not in text
    assert "visionq_live_workers" not in text
    assert "visionq_http_requests_total" in text  # the process's own series still come


def _write_counter(folder: Path, pid: int, route: str, value: float) -> None:
    key = mmap_key(
        "visionq_http_requests",
        "visionq_http_requests_total",
        ["route", "method", "status"],
        [route, "GET", "200"],
        "HTTP requests",
    )
    store = MmapedDict(str(folder / f"counter_{pid}.db"))
    store.write_value(key, value, 0.0)
    store.close()


def test_multiprocess_folder_sums_the_processes(tmp_path: Path) -> None:
    _write_counter(tmp_path, 101, "/healthz", 3)
    _write_counter(tmp_path, 102, "/healthz", 4)
    samples = _samples(render_metrics({"a": 5}, None, multiproc_dir=str(tmp_path)))
    key = (
        "visionq_http_requests_total",
        (("method", "GET"), ("route", "/healthz"), ("status", "200")),
    )
    assert samples[key] == 7
    assert samples[("visionq_queue_depth", (("model", "a"),))] == 5


def test_rejection_reasons_exist_at_zero_and_only_known_codes_count() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from services.api.metrics import REJECT_REASONS, ApiMetrics

    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)
    metrics.init_models(["m1", "m2"])
    value = registry.get_sample_value
    # The 400, 413 and 415 refusals as well as queue_full: a panel or increase() sees the first.
    assert {"invalid_image", "payload_too_large", "unsupported_media_type", "queue_full"} <= set(
        REJECT_REASONS
    )
    for model in ("m1", "m2"):
        assert value("visionq_jobs_submitted_total", {"model": model}) == 0
        for reason in REJECT_REASONS:
            assert value("visionq_jobs_rejected_total", {"model": model, "reason": reason}) == 0
    metrics.count_rejected("m1", "unsupported_media_type")
    metrics.count_rejected("m1", "validation_error")  # a form mistake, not a refused image
    assert (
        value("visionq_jobs_rejected_total", {"model": "m1", "reason": "unsupported_media_type"})
        == 1
    )
    assert (
        value("visionq_jobs_rejected_total", {"model": "m1", "reason": "validation_error"}) is None
    )
    assert b"_created" not in generate_latest(registry)
