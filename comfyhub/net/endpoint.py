"""Where an instance answers and what proves a request comes from comfyhub: host, port, secret.

Every ComfyUI that comfyhub starts carries its extension (comfyhub/comfyui_extension/),
which refuses (403) any request without the header ``X-Comfyhub-Secret: <secret>``. The
secret is made per start and kept in the record's launcher_state (never shown by the
API, never logged). An `Endpoint` is what every client of an instance (health probe,
history sync, job runner, WebSocket listener, proxy) takes, so none rebuilds the header.

The instance proves who it is on every admitted answer: ``X-Comfyhub-Instance`` is the
SHA-256 of its secret, ``X-Comfyhub-Binding`` the project it was bound to (or empty).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

# The same names as in comfyhub/comfyui_extension (which cannot import comfyhub); a test
# keeps them equal. Lower case: that is how the HTTP/1.1 client compares header names.
SECRET_HEADER = "x-comfyhub-secret"
INSTANCE_HEADER = "x-comfyhub-instance"
BINDING_HEADER = "x-comfyhub-binding"
PREFIX = b"x-comfyhub-"  # the proxy drops every such header a browser sends


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def identity_of(secret: str) -> str:
    """What the instance answers in X-Comfyhub-Instance."""
    return hashlib.sha256(secret.encode()).hexdigest()


def binding_of(launcher_state: dict | None) -> int | None:
    """The project an instance was bound to (POST /comfyhub/bind), as its record says;
    None for a cold start (it runs in its project's folder and is not bound)."""
    if not isinstance(launcher_state, dict):
        return None
    value = launcher_state.get("binding")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def secret_of(launcher_state: dict | None) -> str:
    """The instance secret kept in a record's launcher_state; "" for records without one
    (started before instances had secrets: they are still accepted by their argv)."""
    if not isinstance(launcher_state, dict):
        return ""
    value = launcher_state.get("secret")
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int | None
    secret: str = ""
    binding: int | None = None  # the project the instance must say it is bound to; None: unbound

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def header_lines(self) -> str:
        """The secret as HTTP/1.1 header lines (each ending in CRLF), or "" without one."""
        return f"{SECRET_HEADER}: {self.secret}\r\n" if self.secret else ""

    def headers(self) -> list[tuple[str, str]]:
        """The same for clients that take (name, value) pairs (WebSockets)."""
        return [(SECRET_HEADER, self.secret)] if self.secret else []

    def __repr__(self) -> str:  # never the secret, in a log line or a traceback
        return (
            f"Endpoint({self.host!r}, {self.port!r}, secret={'yes' if self.secret else 'no'}, binding={self.binding})"
        )
