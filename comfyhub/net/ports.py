"""Whether a TCP port is free where a server would bind it: the one check every part uses."""

from __future__ import annotations

import errno
import socket


def port_is_free(host: str, port: int) -> bool:
    """Nobody listens on `port` now. SO_REUSEADDR, as servers bind, so that a TIME_WAIT
    leftover still counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True
