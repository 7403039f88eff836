"""Settings: defaults, env parsing, and start-up errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.common.settings import (
    ApiSettings,
    WorkerSettings,
    get_api_settings,
    get_worker_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("VISIONQ_"):
            monkeypatch.delenv(key)
    get_api_settings.cache_clear()
    get_worker_settings.cache_clear()


def test_defaults() -> None:
    s = WorkerSettings()
    assert s.models == ["mobilenet_v3_small"]
    assert s.default_model == "mobilenet_v3_small"
    assert s.max_batch_size == 16


def test_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONQ_MODELS", "resnet50, mobilenet_v3_small")
    monkeypatch.setenv("VISIONQ_API_KEYS", "k" * 16 + ",x" * 1 + "y" * 15)
    s = ApiSettings()
    assert s.models == ["resnet50", "mobilenet_v3_small"]
    assert s.default_model == "resnet50"
    assert len(s.api_keys) == 2


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("VISIONQ_MAX_BATCH_SIZE", "0", "VISIONQ_MAX_BATCH_SIZE"),
        ("VISIONQ_MAX_WAIT_MS", "-1", "VISIONQ_MAX_WAIT_MS"),
        ("VISIONQ_MAX_BATCH_SIZE", "lots", "VISIONQ_MAX_BATCH_SIZE"),
        ("VISIONQ_DEVICE", "tpu", "VISIONQ_DEVICE"),
        ("VISIONQ_REDIS_URL", "http://x", "VISIONQ_REDIS_URL"),
        ("VISIONQ_MODELS", "Bad Name", "VISIONQ_MODELS"),
        ("VISIONQ_DEFAULT_MODEL", "resnet50", "not in VISIONQ_MODELS"),
        ("VISIONQ_MODELS_FILE", "/no/such/file.toml", "VISIONQ_MODELS_FILE"),
        ("VISIONQ_VISIBILITY_TIMEOUT_S", "0", "VISIONQ_VISIBILITY_TIMEOUT_S"),
    ],
)
def test_bad_value_stops_start_up_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        get_worker_settings()
    assert fragment in str(info.value)


def test_short_api_key_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONQ_API_KEYS", "short")
    with pytest.raises(ConfigError, match="VISIONQ_API_KEYS"):
        get_api_settings()


@pytest.mark.parametrize(
    ("timeout", "wait_ms", "limit", "ok"),
    [("10", "500", "3", True), ("10", "1000", "3", False), ("9", "0", "3", False),
     ("300", "5", "60", True)],
)  # fmt: skip
def test_visibility_timeout_must_exceed_the_longest_hold(
    monkeypatch: pytest.MonkeyPatch, timeout: str, wait_ms: str, limit: str, ok: bool
) -> None:
    monkeypatch.setenv("VISIONQ_VISIBILITY_TIMEOUT_S", timeout)
    monkeypatch.setenv("VISIONQ_MAX_WAIT_MS", wait_ms)
    monkeypatch.setenv("VISIONQ_BATCH_TIME_LIMIT_S", limit)
    if ok:
        assert get_worker_settings().longest_hold_s < float(timeout)
    else:
        with pytest.raises(ConfigError, match="VISIONQ_BATCH_TIME_LIMIT_S"):
            get_worker_settings()


def test_models_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "models.toml"
    path.write_text("")
    monkeypatch.setenv("VISIONQ_MODELS_FILE", str(path))
    assert get_worker_settings().models_file == path


def test_forwarded_allow_ips_take_addresses_networks_or_star(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ApiSettings().forwarded_allow_ips == ["127.0.0.1", "::1"]  # uvicorn's own default
    monkeypatch.setenv("VISIONQ_FORWARDED_ALLOW_IPS", "10.0.0.0/8, 192.168.1.7,fd00::/8")
    assert ApiSettings().forwarded_allow_ips == ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]
    monkeypatch.setenv("VISIONQ_FORWARDED_ALLOW_IPS", "*")
    assert ApiSettings().forwarded_allow_ips == ["*"]
    monkeypatch.setenv("VISIONQ_FORWARDED_ALLOW_IPS", "ingress.local")
    with pytest.raises(ConfigError, match="VISIONQ_FORWARDED_ALLOW_IPS"):
        get_api_settings()


def test_redis_memory_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = ApiSettings()
    assert s.redis_policy_check is True and s.queue_max_bytes is None
    monkeypatch.setenv("VISIONQ_REDIS_POLICY_CHECK", "false")
    monkeypatch.setenv("VISIONQ_QUEUE_MAX_BYTES", "1000000")
    s = ApiSettings()
    assert s.redis_policy_check is False and s.queue_max_bytes == 1_000_000
    monkeypatch.setenv("VISIONQ_QUEUE_MAX_BYTES", "-1")
    with pytest.raises(ConfigError, match="VISIONQ_QUEUE_MAX_BYTES"):
        get_api_settings()
    monkeypatch.setenv("VISIONQ_QUEUE_MAX_BYTES", "0")
    monkeypatch.setenv("VISIONQ_REDIS_POLICY_CHECK", "maybe")
    get_api_settings.cache_clear()
    with pytest.raises(ConfigError, match="VISIONQ_REDIS_POLICY_CHECK"):
        get_api_settings()
