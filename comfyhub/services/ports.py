"""Choosing a port: in the range, not recorded for another live instance, nobody listening."""

from __future__ import annotations

import errno
import socket


def port_is_free(host: str, port: int) -> bool:
    """Nobody listens on `port` now. SO_REUSEADDR so that a TIME_WAIT leftover still counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def candidate_ports(port_range: tuple[int, int], taken: set[int], tried: set[int]):
    """Ports to try, lowest first, skipping those held by records or already tried."""
    low, high = port_range
    for port in range(low, high + 1):
        if port not in taken and port not in tried:
            yield port


LOST_BIND_MARKERS = ("address already in use", "eaddrinuse", "errno 98", "only one usage of each socket address")


def lost_bind_race(log_tail: str) -> bool:
    """Whether a child's last words say its port was taken after we chose it."""
    lowered = log_tail.lower()
    return any(marker in lowered for marker in LOST_BIND_MARKERS)
