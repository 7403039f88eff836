"""Tracing helpers: off costs nothing; on, a batch's spans link the way the design says.

The SDK's in-memory exporter collects what ``job_trace`` records for a batch; the whole
path through real processes is tests/integration/test_tracing.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common import tracing
from services.common.jobs import Status
from services.gpu_worker import job_trace
from services.gpu_worker.prepare import Prepared, WorkItem
from services.gpu_worker.store import Outcome

ROOT = Path(__file__).resolve().parents[2]

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_the_standard_variables_switch_it(env: dict[str, str], wanted: bool) -> None:
    assert tracing.requested(env) is wanted


def _run(code: str, **env: str) -> None:
    full = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run(
        [sys.executable, "-c", code], env=full, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


_NOTHING_TRACED = """
import sys
from opentelemetry import trace
from services.common import tracing
from services.api.app import create_app
from services.gpu_worker import job_trace
assert tracing.setup("x") is False
assert job_trace.begin(None, "m", "b", ["j"], (0, 1), 0) is None
with tracing.enqueue_span("m", "interactive", ["j"]) as carrier:
    assert carrier is None
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
traced = ("opentelemetry.sdk.trace", "opentelemetry.exporter")
loaded = [m for m in sys.modules if m.startswith(traced)]
assert not loaded, loaded
"""


def test_off_loads_no_tracing_sdk_and_touches_nothing() -> None:
    # A fresh interpreter without OTEL_*: the API app, the worker runtime and a batch's
    # tracing hooks run without a tracer provider, a span exporter or the trace SDK.
    # (fastapi imports opentelemetry-api and redis-py probes opentelemetry.sdk.metrics by
    # themselves, whatever visionq does.)
    _run(_NOTHING_TRACED)


def test_without_the_extra_otel_variables_only_warn() -> None:
    # The SDK made unimportable, as on an install without the otel extra.
    blocker = """
import sys
class NoSdk:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            raise ImportError(name)
sys.meta_path.insert(0, NoSdk())
"""
    _run(blocker + _NOTHING_TRACED, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")


@pytest.fixture()
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    memory = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    yield memory
    provider.shutdown()


def test_a_batch_records_one_forward_span_linked_from_each_job(exporter: object) -> None:
    # Two jobs from one request (same enqueue context) and one that failed its decode.
    with tracing.enqueue_span("m", "interactive", ["a", "b", "c"]) as carrier:
        assert carrier is not None and carrier["traceparent"]
    trace = job_trace.BatchTrace("m", "batch-1", dict.fromkeys("abc", carrier), (100, 200), 200)
    outcomes = [
        Outcome("a", Status.SUCCEEDED, timings={"decode_ms": 0.5}),
        Outcome("b", Status.SUCCEEDED, timings={"decode_ms": 0.4}),
        Outcome("c", Status.FAILED, error={"code": "invalid_image", "message": "bad"}),
    ]
    items = [WorkItem(j, "m") for j in "ab"]
    prepared = Prepared("m", items, [], [], [], [], [], 0.0, 0.0, batch_id="batch-1", trace=trace)
    job_trace.finish(prepared, outcomes, (1000, 5000), "cuda:0")
    spans = exporter.get_finished_spans()  # type: ignore[attr-defined]
    by_name: dict[str, list[object]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (enqueue,) = by_name["visionq.enqueue"]
    (forward,) = by_name["visionq.forward"]
    jobs = {s.attributes["visionq.job_id"]: s for s in by_name["visionq.job"]}
    assert forward.parent is None  # its own trace
    assert (forward.start_time, forward.end_time) == (1000, 5000)
    assert forward.attributes["visionq.batch_size"] == 2
    assert [lk.context.span_id for lk in forward.links] == [enqueue.context.span_id] * 2
    for job_id, job in jobs.items():
        assert job.parent.span_id == enqueue.context.span_id
        assert job.context.trace_id == enqueue.context.trace_id
        linked = [lk.context.span_id for lk in job.links]
        assert linked == ([forward.context.span_id] if job_id in "ab" else [])
    assert jobs["c"].status.status_code.name == "ERROR"
    children = {
        (s.name, s.parent.span_id)
        for s in spans
        if s.name in ("visionq.claim", "visionq.decode", "visionq.store")
    }
    for job_id in "ab":
        for name in ("visionq.claim", "visionq.decode", "visionq.store"):
            assert (name, jobs[job_id].context.span_id) in children
    assert ("visionq.decode", jobs["c"].context.span_id) not in children  # no decode time kept
