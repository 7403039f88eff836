"""A worker announces itself in Redis: the API's /v1/models and the reaper read it.

A worker declared dead (reaper.py) is fenced: its heartbeat script refuses to beat again,
and the worker exits at once, since its messages were handed to other workers meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from services.common.jobs import worker_key
from services.common.protocol.scripts import script_text
from services.gpu_worker.handback import fence_key

logger = logging.getLogger(__name__)

_BEAT_LUA = script_text("heartbeat")


class Heartbeat:
    """Refreshes ``vq:worker:<id>`` with a TTL of three intervals until stopped."""

    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        info: dict[str, Any],
        interval_s: float,
        on_fenced: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._key = worker_key(worker_id)
        self._fence = fence_key(worker_id)
        self._script = client.register_script(_BEAT_LUA)
        self._on_fenced = on_fenced
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
        value = json.dumps({**self._info, "beat": time.time()})
        try:
            beating = self._script(keys=[self._key, self._fence], args=[value, ttl_ms])
        except redis.RedisError as exc:
            logger.warning("heartbeat failed: %s", exc)
            return
        if not beating:
            logger.critical("this worker was declared dead while it was away; exiting")
            if self._on_fenced is not None:
                self._on_fenced()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._beat()
