"""mlops.util.free_port: the ports tests and `mlops stack` hand to servers they start."""

from __future__ import annotations

import socket

from mlops.util import FREE_PORTS, free_port


def _ephemeral() -> range:
    try:
        low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    except OSError:
        low, high = 32768, 60999
    return range(low, high + 1)


def test_ports_come_from_below_the_ephemeral_range_and_never_twice():
    """A port from the kernel's ephemeral range could be taken by an outgoing connection's source
    port before the server binds it (a CI run lost a whole test module to that once)."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & set(_ephemeral())
    assert all(p in FREE_PORTS for p in ports)
    with socket.socket() as s:  # and it is free
        s.bind(("127.0.0.1", ports[-1]))
