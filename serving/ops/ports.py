"""Free TCP ports for servers this project starts, picked outside the kernel's ephemeral range.

A port the kernel handed out for `bind(0)` comes from the ephemeral range, the same range every outgoing
connection draws its local port from: between the pick and the server's own bind, one of the many connections Ray
opens while it starts can take it ("Address already in use"). Ports below the range are only ever taken by a
listener that asks for them by number.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default; also what macOS's 49152-65535 stays clear of below
# Ray's worker processes listen on 10002-19999 by default, Serve's direct-ingress replicas from 30000 up: pick
# between them.
_PICK_FROM = (20000, 29999)


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int, avoid: frozenset[int] = frozenset()) -> list[int]:
    """`n` distinct ports, free now, outside `avoid`, and outside the ephemeral range where this host leaves room
    below it (a host whose ephemeral range covers `_PICK_FROM` gets ports the kernel hands out, as before)."""
    low, high = ephemeral_range()
    candidates = [p for p in range(_PICK_FROM[0], _PICK_FROM[1] + 1) if not low <= p <= high and p not in avoid]
    random.shuffle(candidates)  # two processes picking at once rarely pick alike
    ports = [p for p in candidates[: n * 50] if _bindable(p)][:n]
    while len(ports) < n:
        port = _any_free()
        if port not in avoid and port not in ports:
            ports.append(port)
    return ports


def free_port() -> int:
    return free_ports(1)[0]
