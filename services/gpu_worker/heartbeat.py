"""A worker announces itself in Redis: the API's /readyz and /v1/models read it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis

from services.common.jobs import worker_key
from services.common.protocol.scripts import beat

logger = logging.getLogger(__name__)


class Heartbeat:
    """Refreshes ``vq:worker:<id>`` with a TTL of three intervals until stopped."""

    def __init__(
        self, client: redis.Redis, worker_id: str, info: dict[str, Any], interval_s: float
    ) -> None:
        self._client = client
        self._key = worker_key(worker_id)
        self._info = {
            **info,
            "worker_id": worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
        }
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vq-heartbeat", daemon=True)

    def start(self) -> None:
        """Beat once now (so readiness is immediate), then in the background."""
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the key, so the API stops counting this worker at once."""
        self._stop.set()
        self._thread.join(self._interval_s * 2)
        with contextlib.suppress(redis.RedisError):
            self._client.delete(self._key)

    def _beat(self) -> None:
        ttl_ms = int(self._interval_s * 3000)
        try:
            # allow-oom: a worker draining a full Redis must not be taken for dead.
            beat(self._client, self._key, json.dumps(self._info), ttl_ms=ttl_ms)
        except redis.RedisError as exc:
            logger.warning("heartbeat failed: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._beat()
