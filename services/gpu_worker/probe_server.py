"""The worker's HTTP port: ``/metrics`` (Prometheus), ``/readyz`` and ``/healthz`` (probes).

``prometheus_client.start_http_server`` answers every path with the metrics, so a probe on
``/metrics`` said "ready" from the moment the port was bound -- before the model was
loaded and warmed, which takes seconds on the CPU and minutes with ``VISIONQ_COMPILE`` on
CUDA. A rolling update then took old pods away while the new ones could serve nothing.
Here ``/readyz`` answers 503 until the worker serves (its ``visionq_worker_up`` is 1) and
again once it stops; ``/healthz`` answers 200 while the process lives; ``/metrics`` (and
``/``) is prometheus_client's WSGI app, as before; any other path is 404, so a probe with
a typo (``/ready``, ``/readyz/``) fails instead of passing on the metrics.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request (a slow scrape never blocks a probe)."""

    daemon_threads = True


class _Server6(_Server):
    """The same, on an IPv6 address (VISIONQ_METRICS_HOST=::)."""

    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log line per scrape and probe."""


def probe_app(
    ready: Callable[[], bool], registry: CollectorRegistry = REGISTRY
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI app: ``/readyz`` (200 while ``ready()``, else 503), ``/healthz`` (200), the
    Prometheus exposition of ``registry`` on ``/metrics`` and ``/``, 404 elsewhere."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/metrics", "/"):
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/readyz":
            ok = ready()
            body = b"ok\n" if ok else b"not ready: the worker is loading its models or stopping\n"
            status = "200 OK" if ok else "503 Service Unavailable"
        elif path == "/healthz":
            body, status = b"ok\n", "200 OK"
        else:
            body, status = b"not found: /metrics, /readyz, /healthz\n", "404 Not Found"
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


def start_probe_server(
    port: int, addr: str, ready: Callable[[], bool], registry: CollectorRegistry = REGISTRY
) -> WSGIServer:
    """Serve ``probe_app`` on ``addr:port`` from a daemon thread; raises OSError if taken."""
    server_class = _Server6 if ":" in addr else _Server
    server = make_server(addr, port, probe_app(ready, registry), server_class, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="vq-metrics", daemon=True).start()
    return server
