"""OpenTelemetry tracing, opt-in: the ``otel`` extra plus the standard ``OTEL_*`` variables.

Tracing is on in a process when the SDK is installed (``pip install 'visionq[otel]'``),
``OTEL_SDK_DISABLED`` is not ``true``, and the environment names somewhere to send spans:
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, or any installed exporter's entry point
name; ``none`` turns it off) or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). Everything else is the SDK's own reading of the
standard variables: ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_PROPAGATORS``.

Off (the default), nothing here imports OpenTelemetry and every helper returns at its first
line. These are the OpenTelemetry SDK's variables, not visionq settings, which is why they
are read here and not in ``services.common.settings``.

One job's trace: the API's HTTP request span (FastAPI's own instrumentation, which uses the
global tracer provider set here) -> ``visionq.enqueue`` (store + publish; its context is
written into the job record as ``traceparent``/``tracestate``) -> in the worker
``visionq.job`` with children ``visionq.claim``, ``visionq.decode``, ``visionq.store``, and
a link to the batch's one ``visionq.forward`` span (see services/gpu_worker/job_trace.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

# The W3C trace-context fields the job record carries (the propagator's carrier keys).
CARRIER_FIELDS = ("traceparent", "tracestate")

_tracer: Any = None  # the visionq tracer once set up; None means tracing is off here


def requested(environ: dict[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask this process for traces (no import needed)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if names:
        return names != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def enabled() -> bool:
    """True once ``setup`` installed a tracer provider in this process."""
    return _tracer is not None


def setup(service_name: str) -> bool:
    """Install the global tracer provider from ``OTEL_*``; False when tracing stays off.

    ``service_name`` is ``service.name`` unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` set one. Calling it again is harmless.
    """
    global _tracer
    if _tracer is not None or not requested():
        return _tracer is not None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning(
            "OTEL_* asks for traces but the otel extra is not installed "
            "(pip install 'visionq[otel]'); tracing stays off"
        )
        return False
    exporters = [_load_exporter(name) for name in _exporter_names()]
    # Ours first, then the environment's on top, so OTEL_SERVICE_NAME wins.
    resource = Resource.create({"service.name": service_name}).merge(
        OTELResourceDetector().detect()
    )
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* apply
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("visionq")
    logger.info("tracing on: %s to %s", service_name, ", ".join(_exporter_names()))
    return True


def _exporter_names() -> list[str]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    return [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]


def _load_exporter(name: str) -> Any:
    from importlib.metadata import entry_points

    if name == "otlp":
        # The extra ships OTLP over HTTP; gRPC works when its exporter package is installed.
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        )
        name = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
    if not found:
        from services.common.errors import ConfigError

        raise ConfigError(f"OTEL_TRACES_EXPORTER: no installed span exporter is named {name!r}")
    return found[0].load()()


def tracer() -> Any:
    """The visionq tracer (an ``opentelemetry.trace.Tracer``), or None when tracing is off."""
    return _tracer


@contextmanager
def enqueue_span(model: str, lane: str, job_ids: list[str]) -> Iterator[dict[str, str] | None]:
    """Span around storing and publishing jobs; yields the carrier to store, or None if off."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind

    attributes = {
        "visionq.model": model,
        "visionq.lane": lane,
        "visionq.job_ids": job_ids,
        "messaging.batch.message_count": len(job_ids),
    }
    with _tracer.start_as_current_span(
        "visionq.enqueue", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier


def extract(carrier: dict[str, str]) -> Any:
    """The ``opentelemetry.context.Context`` a job record's carrier names (tracing on only)."""
    from opentelemetry import propagate

    return propagate.extract(carrier)
