"""Ports the tests and the launcher pick for servers: outside the kernel's ephemeral range, so that an outgoing
connection (Ray opens many while it starts) cannot take one between the pick and the bind."""

from __future__ import annotations

import socket

from serving.ops.ports import ephemeral_range, free_ports


def test_picked_ports_are_outside_the_ephemeral_range_and_bindable() -> None:
    low, high = ephemeral_range()
    ports = free_ports(6, avoid=frozenset({25000}))
    assert len(set(ports)) == 6
    for port in ports:
        assert not low <= port <= high, port
        assert port != 25000
        with socket.socket() as s:  # free now
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_picked() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert taken not in free_ports(50, avoid=frozenset())
