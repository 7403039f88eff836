"""Fault tests: each test gets its own redis-server and its own stack, torn down by PID."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.common.redis_server import RedisServer
from tests.images import make_image
from tests.integration.conftest import stack_env
from tests.integration.stack import Stack

MakeStack = Callable[..., Stack]
FIGURES = Path(__file__).with_name("figures.json")


def record_figure(name: str, value: float) -> None:
    """Keep a measured figure for the reliability table (reported, never asserted as speed)."""
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = round(value, 2)
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def fault_jpeg(fault: str, seed: int = 0) -> bytes:
    """A valid JPEG whose comment asks the worker to misbehave (fault injection on)."""
    buf = io.BytesIO()
    make_image(seed, (96, 96)).save(buf, "JPEG", comment=f"VISIONQ-FAULT:{fault}".encode())
    return buf.getvalue()


@pytest.fixture()
def fault_redis() -> Iterator[RedisServer]:
    server = RedisServer(port=0, appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def make_stack(fault_redis: RedisServer, models_file: Path, tmp_path: Path) -> Iterator[MakeStack]:
    """Build a stack on this test's Redis with fault injection on; stopped afterwards."""
    made: list[Stack] = []

    def make(**overrides: str) -> Stack:
        settings = {
            "VISIONQ_FAULT_INJECTION": "1",
            "VISIONQ_VISIBILITY_TIMEOUT_S": "4",
            "VISIONQ_BATCH_TIME_LIMIT_S": "1.2",
            "VISIONQ_UNACKED_RESTORE_INTERVAL_S": "0.5",
        }
        env = stack_env(models_file, **{**settings, **overrides})
        stack = Stack(fault_redis.url, tmp_path / f"stack{len(made)}", env)
        stack.tmp.mkdir()
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in made:
            stack.stop_all()


# The tuned values stack_env sets for speed; a default-settings stack drops them all.
TUNED = (
    "VISIONQ_MAX_BATCH_SIZE",
    "VISIONQ_MAX_WAIT_MS",
    "VISIONQ_VISIBILITY_TIMEOUT_S",
    "VISIONQ_BATCH_TIME_LIMIT_S",
    "VISIONQ_UNACKED_RESTORE_INTERVAL_S",
    "VISIONQ_HEARTBEAT_INTERVAL_S",
    "VISIONQ_PREDICT_TIMEOUT_S",
)


@pytest.fixture()
def default_stack(
    fault_redis: RedisServer, models_file: Path, tmp_path: Path
) -> Iterator[MakeStack]:
    """Like ``make_stack``, but every reliability setting at its default."""
    made: list[Stack] = []

    def make(**overrides: str) -> Stack:
        env = stack_env(models_file, VISIONQ_FAULT_INJECTION="1", **overrides)
        for name in TUNED:
            if name not in overrides:
                env.pop(name, None)
        stack = Stack(fault_redis.url, tmp_path / f"default{len(made)}", env)
        stack.tmp.mkdir()
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in made:
            stack.stop_all()
