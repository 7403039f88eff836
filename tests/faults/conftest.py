"""Fault tests: each test gets its own redis-server and its own stack, torn down by PID."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.common.redis_server import RedisServer
from tests.images import make_image
from tests.integration.conftest import stack_env
from tests.integration.stack import Stack, stop_procs

MakeStack = Callable[..., Stack]
FIGURES = Path(__file__).with_name("figures.json")


def record_figure(name: str, value: float) -> None:
    """Keep a measured figure for the reliability table (reported, never asserted as speed)."""
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = round(value, 2)
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def fault_jpeg(fault: str, seed: int = 0, release: Path | None = None) -> bytes:
    """A valid JPEG whose comment asks the worker to misbehave (fault injection on).

    ``release``: a ``slow`` stall ends as soon as this file exists (``release_stall``), so
    its seconds are only an upper bound and the test decides when the batch ends.
    """
    mark = f"VISIONQ-FAULT:{fault}" + (f"@{release}" if release is not None else "")
    buf = io.BytesIO()
    make_image(seed, (96, 96)).save(buf, "JPEG", comment=mark.encode())
    return buf.getvalue()


def release_stall(release: Path) -> None:
    """End every ``slow`` stall marked with this release file."""
    release.touch()


@pytest.fixture()
def fault_redis() -> Iterator[RedisServer]:
    server = RedisServer(port=0, appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


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
# make_stack's reliability settings: short enough for a test to see redelivery.
FAST = {
    "VISIONQ_FAULT_INJECTION": "1",
    "VISIONQ_VISIBILITY_TIMEOUT_S": "4",
    "VISIONQ_BATCH_TIME_LIMIT_S": "1.2",
    "VISIONQ_UNACKED_RESTORE_INTERVAL_S": "0.5",
}


@contextmanager
def _stacks(
    redis_url: str, models_file: Path, folder: Path, prefix: str, defaults: bool
) -> Iterator[MakeStack]:
    """A factory of stacks on one Redis; every process of every stack is stopped at the end.

    ``defaults``: every reliability setting at its default (TUNED dropped unless overridden);
    otherwise the FAST settings.
    """
    made: list[Stack] = []

    def make(**overrides: str) -> Stack:
        if defaults:
            env = stack_env(models_file, VISIONQ_FAULT_INJECTION="1", **overrides)
            for name in TUNED:
                if name not in overrides:
                    env.pop(name, None)
        else:
            env = stack_env(models_file, **{**FAST, **overrides})
        stack = Stack(redis_url, folder / f"{prefix}{len(made)}", env)
        stack.tmp.mkdir()
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        stop_procs([proc for stack in made for proc in stack.procs])


@pytest.fixture()
def make_stack(fault_redis: RedisServer, models_file: Path, tmp_path: Path) -> Iterator[MakeStack]:
    """Build a stack on this test's Redis with fault injection on; stopped afterwards."""
    with _stacks(fault_redis.url, models_file, tmp_path, "stack", defaults=False) as make:
        yield make


@pytest.fixture()
def default_stack(
    fault_redis: RedisServer, models_file: Path, tmp_path: Path
) -> Iterator[MakeStack]:
    """Like ``make_stack``, but every reliability setting at its default."""
    with _stacks(fault_redis.url, models_file, tmp_path, "default", defaults=True) as make:
        yield make
