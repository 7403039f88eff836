"""Port checks: a taken port is found before binding and named with its holder and fix."""

from __future__ import annotations

import os
import socket

import pytest

from services.common.errors import ConfigError
from services.common.ports import PortUse, bind_listener, check_ports, port_error, port_holder


def test_a_free_port_passes_and_a_listening_one_is_named() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        held.listen()
        assert port_error("127.0.0.1", port) is not None
        assert port_holder(port) is not None and f"pid {os.getpid()}" in str(port_holder(port))
        with pytest.raises(ConfigError) as info:
            check_ports([PortUse("127.0.0.1", port, "API", "--port")])
    message = info.value.message
    assert message.startswith(f"port {port} (API, 127.0.0.1) is already in use by pid ")
    assert message.endswith("pick another with --port") and "\n" not in message


def test_zero_is_skipped_and_a_port_wanted_twice_is_refused() -> None:
    check_ports([PortUse("127.0.0.1", 0, "embedded Redis", "--redis-port")])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConfigError, match="wanted twice, by the API and the worker 0 metrics"):
        check_ports(
            [
                PortUse("127.0.0.1", port, "API", "--port"),
                PortUse("0.0.0.0", port, "worker 0 metrics", "VISIONQ_METRICS_PORT"),
            ]
        )


def test_bind_listener_holds_the_port_or_says_who_does() -> None:
    sock = bind_listener(PortUse("127.0.0.1", 0, "API", "--port"))
    try:
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} .API, 127.0.0.1. is already in use"):
            bind_listener(PortUse("127.0.0.1", port, "API", "--port"))
    finally:
        sock.close()
