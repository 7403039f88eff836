"""Access control on the real stack: keys, open health routes, CORS, /metrics on its own port."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.stack import Stack
from tests.security.conftest import AUTH, KEY, ORIGIN, OTHER_KEY

pytestmark = pytest.mark.integration

V1_ROUTES = [
    ("GET", "/v1/models"),
    ("GET", "/v1/jobs/0123456789abcdef"),
    ("DELETE", "/v1/jobs/0123456789abcdef"),
    ("POST", "/v1/predict"),
    ("POST", "/v1/jobs"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/0123456789abcdef"),
    ("GET", "/v1/batches/0123456789abcdef/results"),
]
WRONG = [
    {},
    {"Authorization": "Bearer not-the-key-at-all-xxxxxxxx"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": f"Bearer {KEY}x"},
    {"X-API-Key": KEY[:-1]},
    {"X-API-Key": ""},
]


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
def test_every_v1_route_needs_a_key(secure_stack: Stack, method: str, path: str) -> None:
    for headers in WRONG:
        resp = httpx.request(method, secure_stack.url + path, headers=headers, timeout=30)
        assert resp.status_code == 401, (headers, resp.text)
        assert resp.json()["error"]["code"] == "unauthorized"
        assert resp.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers",
    [AUTH, {"authorization": f"bearer {KEY}"}, {"X-API-Key": KEY}, {"X-API-Key": OTHER_KEY}],
    ids=["bearer", "bearer-lowercase", "x-api-key", "second-key"],
)
def test_a_listed_digest_lets_the_key_in(secure_stack: Stack, headers: dict[str, str]) -> None:
    resp = httpx.get(f"{secure_stack.url}/v1/models", headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text


def test_health_routes_stay_open(secure_stack: Stack) -> None:
    assert httpx.get(f"{secure_stack.url}/healthz", timeout=30).status_code == 200
    assert httpx.get(f"{secure_stack.url}/readyz", timeout=30).status_code == 200


def test_metrics_live_on_their_own_port(secure_stack: Stack) -> None:
    main = httpx.get(f"{secure_stack.url}/metrics", headers=AUTH, timeout=30)
    assert main.status_code == 404
    side = f"http://127.0.0.1:{secure_stack.worker_metrics_port}"
    resp = httpx.get(f"{side}/metrics", timeout=30)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert 'visionq_http_requests_total{method="GET",route="/healthz"' in resp.text
    assert f'visionq_queue_depth{{model="{TEST_MODEL}"}}' in resp.text  # read from Redis
    assert httpx.get(f"{side}/v1/models", timeout=30).status_code == 404


def test_cors_preflight_answers_only_the_listed_origin(secure_stack: Stack) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    ok = httpx.options(f"{secure_stack.url}/v1/predict", headers={"Origin": ORIGIN, **ask})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in ok.headers
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    evil = httpx.options(
        f"{secure_stack.url}/v1/predict", headers={"Origin": "https://evil.example", **ask}
    )
    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers


def test_cors_headers_on_answers_and_refusals(secure_stack: Stack) -> None:
    ok = httpx.get(f"{secure_stack.url}/v1/models", headers={"Origin": ORIGIN, **AUTH})
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    # A browser may read the 401 (and its Retry-After on a 429) only with these headers.
    refused = httpx.get(f"{secure_stack.url}/v1/models", headers={"Origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(f"{secure_stack.url}/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_predict_end_to_end_through_the_locked_down_stack(secure_stack: Stack) -> None:
    # API and worker both reach Redis with its password (over TLS when the suite made a cert).
    resp = httpx.post(
        f"{secure_stack.url}/v1/predict",
        files=[("file", ("cat.jpg", jpeg(31), "image/jpeg"))],
        data={"model": TEST_MODEL, "top_k": "3"},
        headers=AUTH,
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    (prediction,) = resp.json()["predictions"]
    assert len(prediction["top_k"]) == 3
