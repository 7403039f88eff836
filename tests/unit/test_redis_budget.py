"""Every Redis visionq deploys has a memory budget: maxmemory below its limit, noeviction.

No Docker engine or cluster here: these tests read the generated compose file and the k8s
manifest; the embedded Redis is checked in test_redis_server.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
_UNITS = {"": 1, "b": 1, "kb": 1000, "k": 1000, "mb": 1000**2, "gb": 1000**3,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "g": 1024**3, "m": 1024**2}  # fmt: skip


def _bytes(text: str, redis_units: bool = False) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", text.strip()).groups()  # type: ignore[union-attr]
    unit = unit.lower()
    if redis_units and unit in ("kb", "mb", "gb"):  # redis: 1mb = 1024*1024 bytes
        return int(number) * 1024 ** ("kmg".index(unit[0]) + 1)
    return int(number) * _UNITS[unit]


def _flags(command: str) -> dict[str, str]:
    words = command.split()
    return {w[2:]: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def _compose_redis() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    redis: dict[str, Any] = doc["services"]["redis"]
    return redis


def _k8s_redis() -> dict[str, Any]:
    docs = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "base" / "redis.yaml").read_text())
    sts = next(d for d in docs if d and d["kind"] == "StatefulSet")
    container: dict[str, Any] = sts["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize(
    ("command", "limit"),
    [
        pytest.param(
            " ".join(_compose_redis()["command"]), _compose_redis()["mem_limit"], id="compose"
        ),
        pytest.param(
            " ".join(_k8s_redis()["command"]),
            _k8s_redis()["resources"]["limits"]["memory"],
            id="k8s",
        ),
    ],
)
def test_maxmemory_is_below_the_limit_with_noeviction(command: str, limit: str) -> None:
    flags = _flags(command)
    assert flags["maxmemory-policy"] == "noeviction"
    maxmemory, ceiling = _bytes(flags["maxmemory"], redis_units=True), _bytes(limit)
    # Room for the AOF rewrite's copy-on-write pages, client buffers and fragmentation.
    assert 0.5 * ceiling <= maxmemory <= 0.8 * ceiling, (maxmemory, ceiling)
