"""Security fixtures: Redis with a password (and TLS when openssl makes a certificate), and a
real API + worker that need a hashed API key, with CORS, a rate limit and separate /metrics.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from services.common.redis_server import RedisServer, free_port
from tests.conftest import TEST_MODEL
from tests.integration.conftest import stack_env
from tests.integration.stack import Stack

KEY = "security-suite-key-0123456789"
OTHER_KEY = "security-suite-other-key-98765"
REDIS_PASSWORD = "redis-pass-Zq8-0123456789"
ORIGIN = "https://app.example.com"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class SecureRedis:
    """The password-protected server and the URL the stack uses (rediss:// when TLS is on)."""

    server: RedisServer
    url: str
    tls: bool
    ca_file: Path | None

    def client(self) -> redis.Redis:
        """A client over the same URL as the stack."""
        return redis.Redis.from_url(self.url)

    def url_with_password(self, password: str) -> str:
        """The stack's URL with another password in it."""
        return self.url.replace(REDIS_PASSWORD, password)


def _self_signed(folder: Path) -> tuple[Path, Path] | None:
    """A certificate and key for 127.0.0.1 from the openssl CLI; None without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    """redis-server with requirepass, plus a TLS port when a certificate could be made."""
    folder = tmp_path_factory.mktemp("redis-tls")
    pair = _self_signed(folder)
    extra: list[str] = []
    tls_port = free_port()
    if pair is not None:
        cert, key = pair
        extra = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                 "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                 "--tls-auth-clients", "no"]  # fmt: skip
    server = RedisServer(port=0, password=REDIS_PASSWORD, extra_args=extra).start()
    try:
        if pair is None:
            yield SecureRedis(server, server.url, tls=False, ca_file=None)
        else:
            url = (
                f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{tls_port}/0"
                f"?ssl_cert_reqs=required&ssl_ca_certs={pair[0]}"
            )
            yield SecureRedis(server, url, tls=True, ca_file=pair[0])
    finally:
        server.stop()


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A keys file holding only sha256 digests, in sha256sum's output format."""
    path = tmp_path_factory.mktemp("keys") / "api-keys.sha256"
    lines = ["# visionq API keys: sha256 of each key, never the key"]
    lines += [f"{hashlib.sha256(k.encode()).hexdigest()}  -" for k in (KEY, OTHER_KEY)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def secure_stack(
    secure_redis: SecureRedis,
    models_file: Path,
    keys_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """API + one CPU worker over the password (and TLS) Redis, locked down."""
    metrics_port = free_port()
    env = stack_env(
        models_file,
        VISIONQ_API_KEYS_FILE=str(keys_file),
        # High enough never to trip in these tests; test_access has its own low-limit API.
        VISIONQ_RATE_LIMIT_PER_MINUTE="100000",
        VISIONQ_CORS_ORIGINS=ORIGIN,
        VISIONQ_METRICS_BIND=f"127.0.0.1:{metrics_port}",
    )
    s = Stack(secure_redis.url, tmp_path_factory.mktemp("secure-stack"), env)
    s.worker_metrics_port = metrics_port  # here: the API's separate metrics port
    try:
        s.start_with_worker(models=TEST_MODEL)
        yield s
    finally:
        s.stop_all()


def api_pid(stack: Stack) -> int:
    """PID of the stack's (single-process) API server."""
    (api,) = [p for p in stack.procs if p.name == "api"]
    return api.popen.pid


def job_state(client: redis.Redis) -> tuple[int, int]:
    """(job records, messages in every model lane): what a refused request must not change."""
    jobs = sum(1 for _ in client.scan_iter(match="vq:job:*", count=1000))
    lanes = client.scan_iter(match="gpu.*", count=1000, _type="list")
    return jobs, sum(int(client.llen(q)) for q in lanes)


def get(stack: Stack, path: str) -> httpx.Response:
    """GET on the stack with the API key."""
    return httpx.get(stack.url + path, headers=AUTH, timeout=30)
