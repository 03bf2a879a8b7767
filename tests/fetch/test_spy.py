"""The NetSpy that the no-connect assertions rely on really sees and stops connections.

Only loopback addresses are used here, so even a spy that failed would send nothing off the
machine.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.fetch.support import NetSpy, run, unused_port


def test_spy_refuses_a_blocking_connect_before_the_system_call(net: NetSpy) -> None:
    port = unused_port()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError, match="test net spy"):
        s.connect(("127.0.0.1", port))
    assert net.attempts == [("127.0.0.1", port)]
    assert net.violations == [f"connect to 127.0.0.1:{port}"]
    net.violations.clear()  # expected here; any other test with a violation fails


def test_spy_refuses_the_event_loop_connect_path_aiohttp_uses(net: NetSpy) -> None:
    port = unused_port()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET) as s:
            s.setblocking(False)
            with pytest.raises(ConnectionRefusedError, match="test net spy"):
                await loop.sock_connect(s, ("127.0.0.1", port))

    run(scenario())
    assert net.violations == [f"connect to 127.0.0.1:{port}"]
    net.violations.clear()


def test_spy_refuses_real_dns(net: NetSpy) -> None:
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.com", 80)
    assert net.violations == ["real DNS lookup of 'example.com'"]
    net.violations.clear()
    assert socket.getaddrinfo("127.0.0.1", 80)  # numeric hosts never touch a resolver
