"""How a request and its answer are rewritten on their way through the proxy: the path
without its /comfy/{id} prefix, the headers the instance gets (the browser's Host kept,
hop-by-hop headers and comfyhub's own credentials dropped, X-Forwarded-* set, the
instance secret added) and the headers the browser gets back."""

from __future__ import annotations

import re

from comfyhub.net.endpoint import PREFIX as COMFYHUB_HEADERS
from comfyhub.net.endpoint import SECRET_HEADER
from comfyhub.security import INSTANCE_COOKIE, SESSION_COOKIE

PREFIX = "/comfy/"
PATH = re.compile(r"^/comfy/(\d{1,10})(/.*)?$")
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization te trailer trailers "
    b"transfer-encoding upgrade proxy-connection".split()
)
_NOT_FORWARDED = HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"cookie",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-prefix",
}
_COMFYHUB_COOKIES = (SESSION_COOKIE.encode() + b"=", INSTANCE_COOKIE.encode() + b"=")


def header_map(scope) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", []):
        name = name.lower()
        headers[name] = headers[name] + b"; " + value if name == b"cookie" and name in headers else value
    return headers


def upstream_path(scope, project_id: int) -> bytes:
    raw = scope.get("raw_path") or scope["path"].encode()
    prefix = f"{PREFIX}{project_id}".encode()
    path = raw[len(prefix) :] or b"/"
    query = scope.get("query_string", b"")
    if b"?" not in path and query:
        path += b"?" + query
    return path


def forwarded(scope, headers: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    client = scope.get("client")
    proto = b"https" if scope.get("scheme") in ("https", "wss") else b"http"
    out = [(b"x-forwarded-proto", proto), (b"x-forwarded-prefix", b"/comfy/%d" % path_project_id(scope))]
    if b"host" in headers:
        out.append((b"x-forwarded-host", headers[b"host"]))
    if client:
        out.append((b"x-forwarded-for", client[0].encode()))
    return out


def path_project_id(scope) -> int:
    """The project id in a /comfy/{id}/… path (already validated by `__call__`)."""
    return int(PATH.match(scope["path"]).group(1))


def without_comfyhub_cookies(raw: bytes) -> bytes | None:
    """The Cookie header without comfyhub's own cookies (the session and the instance one)."""
    kept = [c for c in raw.split(b";") if c.strip() and not c.strip().startswith(_COMFYHUB_COOKIES)]
    return b";".join(kept).strip() or None


def request_head(scope, path: bytes, headers: dict[bytes, bytes] | None = None, secret: str = "") -> tuple[bytes, bool]:
    """The request line and headers for the instance, and whether the body goes chunked.

    Any X-Comfyhub-* header the browser sent is dropped: only comfyhub speaks for itself
    to an instance, with the instance secret."""
    if headers is None:
        headers = header_map(scope)
    lines = [b"%s %s HTTP/1.1" % (scope["method"].encode(), path), b"host: " + headers.get(b"host", b"localhost")]
    for name, value in scope["headers"]:
        lower = name.lower()
        if lower not in _NOT_FORWARDED and not lower.startswith(COMFYHUB_HEADERS):
            lines.append(name + b": " + value)
    if secret:
        lines.append(SECRET_HEADER.encode() + b": " + secret.encode())
    cookie = headers.get(b"cookie")
    if cookie and (rest := without_comfyhub_cookies(cookie)):
        lines.append(b"cookie: " + rest)
    lines.extend(k + b": " + v for k, v in forwarded(scope, headers))
    length = headers.get(b"content-length")
    chunked = length is None and b"chunked" in headers.get(b"transfer-encoding", b"").lower()
    if length is not None:
        lines.append(b"content-length: " + length)
    elif chunked:
        lines.append(b"transfer-encoding: chunked")
    lines.append(b"connection: keep-alive")
    return b"\r\n".join(lines) + b"\r\n\r\n", chunked


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    # Framing is redone by the server in front (content-length kept when known).
    # The instance's identity headers are for comfyhub, not for the browser.
    return [
        (k.lower(), v) for k, v in headers if k.lower() not in HOP_BY_HOP and not k.lower().startswith(COMFYHUB_HEADERS)
    ]
