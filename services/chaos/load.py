"""Steady load from the real client during a chaos run, with every answer recorded.

Three loops share the API processes: ``/v1/predict`` (the server's default wait),
``POST /v1/jobs``, and one batch. A job counts as accepted once the client saw its id in a
2xx answer. Every HTTP status is recorded by the transport, under the client's own
retries, so a 503 the client retried is still seen.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field

import httpx

from services.client import ApiError, ApiTimeout, Client, RetryPolicy, TransportError

logger = logging.getLogger(__name__)


@dataclass
class Seen:
    """What the clients saw."""

    accepted: set[str] = field(default_factory=set)
    statuses: list[tuple[float, int, str]] = field(default_factory=list)  # wall, status, path
    transport_errors: list[tuple[float, str]] = field(default_factory=list)
    predict_failures: list[tuple[float, str]] = field(default_factory=list)
    requests: int = 0
    batch_ids: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)  # job ids of /v1/predict 504s
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, job_ids: list[str]) -> None:
        with self.lock:
            self.accepted.update(j for j in job_ids if j)


class RecordingTransport(httpx.HTTPTransport):
    """An HTTP transport that notes every answer's status (and every transport failure)."""

    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self._seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = super().handle_request(request)
        except httpx.TransportError as exc:
            with self._seen.lock:
                self._seen.transport_errors.append((time.time(), type(exc).__name__))
            raise
        with self._seen.lock:
            self._seen.requests += 1
            self._seen.statuses.append((time.time(), response.status_code, request.url.path))
        return response


class Load:
    """The three client loops, until ``stop``."""

    def __init__(
        self, urls: list[str], model: str, images: list[bytes], pace_s: float, per_request: int
    ) -> None:
        self.seen = Seen()
        self._urls = urls
        self._model = model
        self._images = images
        self._pace_s = pace_s
        self._per_request = per_request
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(name,), name=f"load-{name}", daemon=True)
            for name in ("predict", "jobs", "batch")
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _client(self, url: str) -> Client:
        return Client(url, timeout_s=90, retry=RetryPolicy(retries=6, backoff_s=0.5),
                      transport=RecordingTransport(self.seen))  # fmt: skip

    def _loop(self, kind: str) -> None:
        urls = itertools.cycle(self._urls)
        files = itertools.cycle(range(len(self._images)))
        count = 0
        while not self._stop.wait(self._pace_s):
            url = next(urls)
            batch = [
                (f"{kind}-{count}-{k}.jpg", self._images[next(files)])
                for k in range(self._per_request)
            ]
            count += 1
            try:
                with self._client(url) as client:
                    self._one(kind, client, batch, count)
            except TransportError as exc:
                logger.info("%s via %s: %s", kind, url, exc)  # an API process was killed
            except ApiError as exc:
                if isinstance(exc, ApiTimeout):
                    self.seen.accept(exc.job_ids)  # accepted, just not done in time
                    with self.seen.lock:
                        self.seen.timed_out += exc.job_ids
                if kind == "predict":
                    with self.seen.lock:
                        self.seen.predict_failures.append((time.time(), f"{exc.status} {exc}"))
                logger.info("%s via %s: %s", kind, url, exc)

    def _one(self, kind: str, client: Client, batch: list[tuple[str, bytes]], count: int) -> None:
        if kind == "predict":
            result = client.predict(batch, model=self._model)
            self.seen.accept([p.job_id for p in result.predictions])
            bad = [p.error for p in result.predictions if p.error is not None]
            if bad:
                with self.seen.lock:
                    self.seen.predict_failures.append((time.time(), str(bad[0])))
        elif kind == "jobs":
            self.seen.accept([ref.job_id for ref in client.submit(batch, model=self._model)])
        elif count % 20 == 1:  # now and then a batch upload of a dozen images
            many = [(f"b{count}-{k}.jpg", self._images[k % len(self._images)]) for k in range(12)]
            upload = client.create_batch(many, model=self._model, chunk_size=8)
            with self.seen.lock:
                self.seen.batch_ids.append(upload.batch_id)
