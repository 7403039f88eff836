"""API keys (plaintext and hashed file), CORS and metrics-bind settings, and the key check."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.deps import AuthDep, key_matches
from services.api.errors import install_error_handlers
from services.common.errors import ConfigError
from services.common.settings import ApiSettings, get_api_settings

KEY = "unit-test-key-0123456789"
OTHER = "unit-test-other-key-abcdef"


def digest_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("VISIONQ_"):
            monkeypatch.delenv(key)
    get_api_settings.cache_clear()


def test_keys_file_holds_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# ops team\n\n{digest_hex(KEY)}  -\n{digest_hex(OTHER).upper()} # ci\n")
    monkeypatch.setenv("VISIONQ_API_KEYS_FILE", str(path))
    monkeypatch.setenv("VISIONQ_API_KEYS", "plain-key-0123456789")
    settings = get_api_settings()
    expected = {hashlib.sha256(k.encode()).digest() for k in (KEY, OTHER, "plain-key-0123456789")}
    assert set(settings.key_digests) == expected


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (f"{KEY}\n", "line 1 is not a sha256 hex digest"),  # a plaintext key by mistake
        (f"{digest_hex(KEY)[:-1]}\n", "line 1"),
        (f"{digest_hex(KEY)}\nzz{digest_hex(KEY)[2:]}\n", "line 2"),
        ("# only comments\n\n", "holds no key digest"),
    ],
    ids=["plaintext", "short", "not-hex", "empty"],
)
def test_bad_keys_file_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, fragment: str
) -> None:
    path = tmp_path / "keys"
    path.write_text(content)
    monkeypatch.setenv("VISIONQ_API_KEYS_FILE", str(path))
    with pytest.raises(ConfigError) as info:
        get_api_settings()
    message = str(info.value)
    assert "VISIONQ_API_KEYS_FILE" in message and fragment in message
    assert KEY not in message  # a key written in clear by mistake is never echoed


def test_missing_keys_file_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONQ_API_KEYS_FILE", "/no/such/keys")
    with pytest.raises(ConfigError, match="VISIONQ_API_KEYS_FILE"):
        get_api_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VISIONQ_CORS_ORIGINS", "*"),
        ("VISIONQ_CORS_ORIGINS", "https://ok.example,https://*.example"),
        ("VISIONQ_CORS_ORIGINS", "https://app.example/path"),
        ("VISIONQ_CORS_ORIGINS", "app.example"),
        ("VISIONQ_METRICS_BIND", "9200"),
        ("VISIONQ_METRICS_BIND", "127.0.0.1:99999"),
        ("VISIONQ_METRICS_BIND", "127.0.0.1:0"),
        ("VISIONQ_RATE_LIMIT_PER_MINUTE", "-1"),
    ],
)
def test_bad_access_settings_name_themselves(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        get_api_settings()


def test_access_settings_defaults_are_closed_doors() -> None:
    settings = ApiSettings()
    assert settings.key_digests == ()
    assert settings.cors_origins == []
    assert settings.metrics_address is None
    assert settings.rate_limit_per_minute == 0


def test_metrics_address_parses_v4_and_v6() -> None:
    assert ApiSettings(metrics_bind="127.0.0.1:9200").metrics_address == ("127.0.0.1", 9200)
    assert ApiSettings(metrics_bind="[::1]:9200").metrics_address == ("::1", 9200)


def test_key_matches_compares_digests() -> None:
    digests = (hashlib.sha256(KEY.encode()).digest(), hashlib.sha256(OTHER.encode()).digest())
    assert key_matches(KEY, digests) and key_matches(OTHER, digests)
    assert not key_matches(KEY + " ", digests)
    assert not key_matches("", digests)
    assert not key_matches(digest_hex(KEY), digests)  # the digest itself is not a key


def _app(settings: ApiSettings) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.state.visionq = SimpleNamespace(settings=settings, key_digests=settings.key_digests)

    @app.get("/v1/thing", dependencies=[AuthDep])
    async def thing() -> dict[str, str]:
        return {"ok": "yes"}

    return TestClient(app)


def test_key_check_accepts_bearer_and_x_api_key() -> None:
    client = _app(ApiSettings(api_keys=[KEY]))
    assert client.get("/v1/thing", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/v1/thing", headers={"Authorization": f"BEARER  {KEY}"}).status_code == 200
    assert client.get("/v1/thing", headers={"X-API-Key": KEY}).status_code == 200
    # A wrong Bearer is not rescued by a right X-API-Key: one credential per request.
    both = {"Authorization": "Bearer nope-nope-nope-nope", "X-API-Key": KEY}
    assert client.get("/v1/thing", headers=both).status_code == 401
    refused = client.get("/v1/thing")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert refused.headers["www-authenticate"] == 'Bearer realm="visionq"'


def test_no_keys_means_open() -> None:
    assert _app(ApiSettings()).get("/v1/thing").status_code == 200


def test_cors_is_off_by_default() -> None:
    client = TestClient(create_app(ApiSettings()))
    ask = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    resp = client.options("/v1/predict", headers=ask)
    assert "access-control-allow-origin" not in resp.headers


def test_cors_allows_only_listed_origins() -> None:
    client = TestClient(create_app(ApiSettings(cors_origins=["https://app.example"])))
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    ok = client.options("/v1/predict", headers={"Origin": "https://app.example", **ask})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-credentials" not in ok.headers
    bad = client.options("/v1/predict", headers={"Origin": "https://evil.example", **ask})
    assert "access-control-allow-origin" not in bad.headers


def test_metrics_route_is_404_when_bound_elsewhere() -> None:
    app = create_app(ApiSettings(metrics_bind="127.0.0.1:9200"))
    app.state.visionq = SimpleNamespace(settings=ApiSettings(metrics_bind="127.0.0.1:9200"))
    resp = TestClient(app).get("/metrics")
    assert resp.status_code == 404
    assert "VISIONQ_METRICS_BIND" in resp.json()["error"]["message"]
