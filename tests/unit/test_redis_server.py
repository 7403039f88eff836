"""RedisServer against a real redis-server on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.common import redis_server as rs
from services.common.errors import ConfigError
from services.common.redis_server import (
    RedisServer,
    RedisServerError,
    default_maxmemory,
    find_redis_server,
    free_port,
)

NO_RETRY = Retry(NoBackoff(), 0)


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536


def test_start_ping_stop_removes_process_and_tmp_dir() -> None:
    server = RedisServer()
    with server:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = server.client()
        assert client.ping()
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        # A budget below the machine's memory, never "no limit" (0).
        maxmemory = int(client.config_get("maxmemory")["maxmemory"])
        assert maxmemory == default_maxmemory()
        assert 0 < maxmemory <= 2 * 1024**3
        assert client.config_get("appendonly")["appendonly"] == "no"
        pid, data_dir = server.pid, server.dir
        assert pid is not None and data_dir.is_dir() and server.log_path.exists()
        client.close()
    assert not server.running
    assert _gone(pid)
    assert not data_dir.exists()


def test_password_appendonly_and_given_dir_kept(tmp_path: Path) -> None:
    with RedisServer(password="s3cret/pw", appendonly=True, dir=tmp_path / "data") as server:
        assert server.url.startswith("redis://:s3cret%2Fpw@127.0.0.1:")
        anonymous = redis.Redis("127.0.0.1", server.port, retry=NO_RETRY)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        assert redis.Redis.from_url(server.url).ping()
        assert server.client().config_get("appendonly")["appendonly"] == "yes"
    assert (tmp_path / "data").is_dir()


def test_kill_then_restart_same_port_keeps_appendonly_data(tmp_path: Path) -> None:
    with RedisServer(appendonly=True) as server:
        port, first_pid = server.port, server.pid
        assert first_pid is not None
        server.client().set("k", "v")
        server.kill()
        assert not server.running and _gone(first_pid)
        with pytest.raises(redis.ConnectionError):
            redis.Redis("127.0.0.1", port, socket_timeout=1, retry=NO_RETRY).ping()
        server.restart()
        assert server.port == port and server.pid != first_pid
        assert server.client().get("k") == b"v"


def test_explicit_port_taken_by_another_server_fails() -> None:
    with RedisServer() as first:
        second = RedisServer(first.port, start_timeout_s=5)
        with pytest.raises(RedisServerError):
            second.start()
        assert not second.running
        assert first.client().ping()
        second.stop()


def test_missing_binary_raises_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ConfigError, match="apt-get install redis-server"):
        find_redis_server()


# The first line is what Redis < 7.0 can't compile (script flags came with 7.0).
FLAGGED_SCRIPT = "#!lua flags=allow-oom\nreturn 1"


def test_the_server_found_runs_scripts_with_flags() -> None:
    binary = find_redis_server()
    version = rs.redis_version(binary)
    assert version is not None and version[:2] >= rs.MIN_REDIS_VERSION
    with RedisServer(binary=binary) as server:
        assert server.client().eval(FLAGGED_SCRIPT, 0) == 1


def test_an_old_redis_on_the_path_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A stand-in for Ubuntu 22.04's Redis 6.0 (only its --version is asked).
    old = tmp_path / "redis-server"
    old.write_text("#!/bin/sh\necho 'Redis server v=6.0.16 sha=00000000:0 malloc=jemalloc'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"found only .*redis-server \(6\.0\.16\)"):
        find_redis_server()


def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import time
        from services.common.redis_server import RedisServer
        server = RedisServer(dir={str(tmp_path / "data")!r}).start()
        open({str(pid_file)!r}, "w").write(str(server.pid))
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text():
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        redis_pid = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        assert _gone(redis_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
