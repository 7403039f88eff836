"""Check the TCP ports a visionq process is about to bind, and say who holds a taken one.

A bind failure deep inside uvicorn, prometheus-client or redis-server surfaces as a
traceback, a hang or a crash loop; checking first turns it into one line that names the
port, its holder (when psutil can see it) and the setting that picks another.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from dataclasses import dataclass

from services.common.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PortUse:
    """A port a process will bind: what for, and the option or variable that moves it."""

    host: str
    port: int
    what: str
    option: str


def port_error(host: str, port: int) -> OSError | None:
    """The error binding ``host:port`` would give now (None when it is free).

    Binds with SO_REUSEADDR as uvicorn and redis-server do, so a port left in TIME_WAIT by a
    stopped server counts as free, exactly as it is for them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host or "0.0.0.0", port))
    except OSError as exc:
        return exc
    return None


def port_holder(port: int) -> str | None:
    """'pid 123, python -m services.cli.main api ...' for the process listening on ``port``."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None  # some systems hide other users' sockets
    for conn in conns:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if conn.pid is None:
            return "a process of another user"
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(psutil.Process(conn.pid).cmdline()) or psutil.Process(conn.pid).name()
            return f"pid {conn.pid}: {cmd[:120]}"
        return f"pid {conn.pid}"
    return None


def describe_taken(use: PortUse, exc: OSError) -> str:
    """One line: the port, why it can't be bound, its holder, and how to pick another."""
    if exc.errno == errno.EADDRINUSE:
        holder = port_holder(use.port)
        why = "is already in use" + (f" by {holder}" if holder else "")
    else:
        why = f"cannot be bound ({exc.strerror or exc})"
    return f"port {use.port} ({use.what}, {use.host}) {why}; pick another with {use.option}"


def check_ports(uses: list[PortUse]) -> None:
    """Raise ConfigError naming the first port of ``uses`` that cannot be bound."""
    seen: dict[int, PortUse] = {}
    for use in uses:
        if use.port == 0:
            continue  # 0 asks the system for a free port
        if use.port in seen:
            other = seen[use.port]
            raise ConfigError(
                f"port {use.port} is wanted twice, by the {other.what} and the {use.what}; "
                f"pick another with {use.option}"
            )
        seen[use.port] = use
        exc = port_error(use.host, use.port)
        if exc is not None:
            raise ConfigError(describe_taken(use, exc))


def bind_listener(use: PortUse) -> socket.socket:
    """A TCP socket bound to ``use`` (SO_REUSEADDR, as uvicorn binds), ready to hand over.

    Binding here, before the server starts, leaves no window in which another process can
    take the port after the check; ConfigError with one line when it is taken.
    """
    family = socket.AF_INET6 if ":" in use.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((use.host or "0.0.0.0", use.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(describe_taken(use, exc)) from exc
    sock.set_inheritable(True)
    return sock
