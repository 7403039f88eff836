"""Tracing end to end: the real API and worker export OTLP/HTTP to a collector in the test.

The processes are configured only through the standard variables an operator would set
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_BSP_SCHEDULE_DELAY``); the collector decodes the
protobuf export requests with the OpenTelemetry proto package, as a real collector would.
One ``POST /v1/predict`` must give one connected trace: HTTP request -> enqueue -> the job
in the worker -> claim / decode / store, and a link from the job to its batch's one forward
span, which links back to the job's enqueue span.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.common.redis_server import RedisServer
from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.conftest import stack_env
from tests.integration.helpers import files, predict
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

trace_pb2 = pytest.importorskip("opentelemetry.proto.trace.v1.trace_pb2")

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the otel extra (opentelemetry-exporter-otlp-proto-http) is not installed",
)


@dataclass
class Span:
    """One received span, the fields the assertions need."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    links: list[tuple[str, str]]  # (trace id, span id)
    attributes: dict[str, Any]


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver on a free loopback port."""

    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def receive(self, body: bytes) -> None:
        request = trace_service.ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    span = Span(
                        service=service,
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        kind=s.kind,
                        links=[(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links],
                        attributes={a.key: _value(a.value) for a in s.attributes},
                    )
                    with self.lock:
                        self.spans.append(span)

    def snapshot(self) -> list[Span]:
        with self.lock:
            return list(self.spans)


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    col = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/v1/traces":
                col.receive(body)
            reply = trace_service.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    col.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=col.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield col
    finally:
        col.server.shutdown()
        col.server.server_close()


@pytest.fixture(scope="module")
def traced_stack(
    collector: Collector, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    server = RedisServer(port=0).start()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the collector soon after
    }
    s = Stack(server.url, tmp_path_factory.mktemp("traced"), stack_env(models_file, **otel))
    try:
        s.start_with_worker(models=TEST_MODEL)
        yield s
    finally:
        s.stop_all()
        server.stop()


def _trace_of(collector: Collector, job_id: str, deadline_s: float = 30.0) -> list[Span]:
    """Every span of the job's trace, once its root and the worker's store span arrived."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        spans = collector.snapshot()
        jobs = [
            s
            for s in spans
            if s.name == "visionq.job" and s.attributes.get("visionq.job_id") == job_id
        ]
        if jobs:
            trace_id = jobs[0].trace_id
            mine = [s for s in spans if s.trace_id == trace_id]
            # The request span ends (and is exported) after the response was sent: on a
            # busy machine it arrives after the worker's spans.
            root = any(not s.parent_id for s in mine)
            if root and {"visionq.store", "visionq.enqueue"} <= {s.name for s in mine}:
                return mine
        time.sleep(0.2)
    names = sorted({(s.service, s.name) for s in collector.snapshot()})
    raise AssertionError(f"no complete trace for job {job_id} within {deadline_s}s; got {names}")


def test_one_request_gives_one_connected_trace(traced_stack: Stack, collector: Collector) -> None:
    resp = predict(traced_stack.url, files(("cat.jpg", jpeg(41))), model=TEST_MODEL)
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["predictions"][0]["job_id"]
    spans = _trace_of(collector, job_id)
    by_id = {s.span_id: s for s in spans}
    named = {s.name: s for s in spans}

    # The API's request span is the root; everything else hangs below it in one tree.
    roots = [s for s in spans if not s.parent_id]
    assert len(roots) == 1, [s.name for s in roots]
    assert roots[0].service == "visionq-api" and roots[0].name.startswith("POST")
    assert roots[0].kind == trace_pb2.Span.SPAN_KIND_SERVER
    for span in spans:
        if span.parent_id:
            assert span.parent_id in by_id, f"{span.name} has a parent outside the trace"

    enqueue, job = named["visionq.enqueue"], named["visionq.job"]
    assert enqueue.service == "visionq-api" and job.service == "visionq-worker"
    assert _ancestors(enqueue, by_id)[-1] is roots[0]
    assert job.parent_id == enqueue.span_id  # the context travelled in the job record
    for child in ("visionq.claim", "visionq.decode", "visionq.store"):
        assert named[child].parent_id == job.span_id, child
        assert named[child].service == "visionq-worker"
    assert job.attributes["visionq.outcome"] == "succeeded"

    # ONE forward span for the batch, in its own trace, linked both ways.
    (link,) = job.links
    forward = _wait_span(collector, link)
    assert forward.name == "visionq.forward"
    assert forward.attributes["visionq.batch_size"] >= 1
    assert job_id in forward.attributes["visionq.job_ids"]
    assert forward.attributes["visionq.batch_id"] == job.attributes["visionq.batch_id"]
    assert (enqueue.trace_id, enqueue.span_id) in forward.links


def test_a_batch_has_one_forward_span_linked_from_each_job(
    traced_stack: Stack, collector: Collector
) -> None:
    parts = files(*[(f"img{i}.jpg", jpeg(60 + i)) for i in range(6)])
    resp = predict(traced_stack.url, parts, model=TEST_MODEL)
    assert resp.status_code == 200, resp.text
    job_ids = [p["job_id"] for p in resp.json()["predictions"]]
    jobs = []
    for job_id in job_ids:
        spans = _trace_of(collector, job_id)
        jobs += [s for s in spans if s.name == "visionq.job"]
    batches = {s.attributes["visionq.batch_id"] for s in jobs}
    forwards = [
        s
        for s in collector.snapshot()
        if s.name == "visionq.forward" and s.attributes["visionq.batch_id"] in batches
    ]
    # However the worker grouped the six jobs, each batch has exactly one forward span and
    # every job links to its own batch's.
    assert len(forwards) == len(batches)
    assert sum(f.attributes["visionq.batch_size"] for f in forwards) == len(job_ids)
    by_batch = {f.attributes["visionq.batch_id"]: f for f in forwards}
    for job in jobs:
        forward = by_batch[job.attributes["visionq.batch_id"]]
        assert job.links == [(forward.trace_id, forward.span_id)]


def _ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain = [span]
    while chain[-1].parent_id:
        chain.append(by_id[chain[-1].parent_id])
    return chain


def _wait_span(collector: Collector, ids: tuple[str, str], deadline_s: float = 30.0) -> Span:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for span in collector.snapshot():
            if (span.trace_id, span.span_id) == ids:
                return span
        time.sleep(0.2)
    raise AssertionError(f"span {ids} never arrived")
