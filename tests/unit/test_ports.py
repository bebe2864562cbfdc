"""Ports the tests and the launcher pick for servers: outside the kernel's ephemeral range, so that an outgoing
connection (Ray opens many while it starts) cannot take one between the pick and the bind."""

from __future__ import annotations

import socket

import pytest

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


def test_a_port_in_use_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.ops import ports

    held_port = free_ports(1)[0]  # from the range picks come from (found in review: bind(0) never was)
    window = [p for p in range(held_port, held_port + 8) if p == held_port or ports._bindable(p)][:4]
    monkeypatch.setattr(ports, "_PICK_FROM", (window[0], window[-1]))
    with socket.socket() as held:
        held.bind(("127.0.0.1", held_port))
        held.listen()
        picked = ports.free_ports(len(window) - 1)
    assert held_port not in picked and set(picked) <= set(range(window[0], window[-1] + 1))


def test_a_host_whose_ephemeral_range_covers_the_picks_still_gets_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: with ip_local_port_range 1024-65535 there was no candidate, and launch failed."""
    from serving.ops import ports

    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 65535))
    picked = ports.free_ports(4, avoid=frozenset({8000}))
    assert len(set(picked)) == 4 and 8000 not in picked
