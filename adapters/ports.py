"""Loopback ports for the processes the project starts itself (engines, Redis, Prometheus,
gateways): one helper for the demo, the load tests and the test fixtures.

    port = free_port()        # bound and released: free at the moment of the call
    port_open(port)           # something accepts connections on 127.0.0.1:port
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1; the caller binds it next."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, timeout: float = 0.2) -> bool:
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0
