"""Who sent a request, and from which site: the checks the API and the proxy share.

Both front doors (the /api routes and the /comfy/ gateway) read the session token the
same way and refuse the same cross-site requests, so the rules live here once. The API
works on Starlette requests and the proxy on raw ASGI headers (bytes), so these functions
take plain strings; each caller extracts the header values in its own way.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

SESSION_COOKIE = "comfyhub_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Personal access tokens start with this, so the lookup knows their table and secret
# scanners can spot one pasted where it should not be.
API_TOKEN_PREFIX = "chp_"


def is_api_token(token: str | None) -> bool:
    """Whether `token` is a personal access token (as opposed to a login session)."""
    return bool(token) and token.startswith(API_TOKEN_PREFIX)


def session_token(authorization: str, cookie: str) -> tuple[str | None, bool]:
    """The caller's session token and whether it came from the cookie.

    A bearer token wins over the cookie: scripts send the header, browsers the cookie.
    A personal access token is never taken from the cookie: it is meant for scripts, and
    a cookie can be planted by another site on the same host (another port shares it).
    """
    bearer = bearer_token(authorization)
    if bearer is not None:
        return bearer, False
    token = cookie_value(cookie, SESSION_COOKIE)
    return (token, True) if token and not is_api_token(token) else (None, False)


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer …` header (a script's; never sent by a browser on its own)."""
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def cookie_value(header: str, name: str) -> str | None:
    """The first non-empty value of cookie `name` in a Cookie header.

    Lenient on purpose, like Starlette's parser: cookies are shared by every port of a
    host, and another site's cookie with a space, a quote or JSON in it must not hide the
    session (http.cookies.SimpleCookie gives up on the whole header then).
    """
    for part in header.split(";"):
        key, eq, value = part.partition("=")
        if eq and key.strip() == name:
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value:
                return value
    return None


def origin_required(from_cookie: bool, method: str, websocket: bool = False) -> bool:
    """Whether the request must come from a page of this site to be let through.

    Only cookie-authenticated requests can be forged by another site (a bearer token is
    never sent by the browser on its own). Reads are harmless; writes are not, and neither
    are WebSocket handshakes, which browsers send cross-site with cookies.
    """
    return from_cookie and (websocket or method not in SAFE_METHODS)


def same_origin(origin: str | None, referer: str | None, host: str, trusted: set[str]) -> bool:
    """Whether a browser request comes from a page of this site.

    SameSite=Lax does not stop a page on another port of the same host, so the Origin
    (or, without one, the Referer) must name this host, or be one of the `trusted`
    origins (`scheme://host[:port]`, from COMFYHUB_TRUSTED_ORIGINS) when a front proxy
    serves the site under another name.
    """
    source = origin or referer
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    return parts.netloc == host or f"{parts.scheme}://{parts.netloc}" in trusted


# --- the instance origin ------------------------------------------------------------------

INSTANCE_COOKIE = "comfyhub_instance"
_PROJECT = "{project}"


class InstanceOrigin:
    """Where browsers reach ComfyUI: an origin that is never comfyhub's own.

    Scripts in ComfyUI's pages (custom nodes) run with that origin, so the browser keeps
    them away from comfyhub's API: no cookie of the API counts there, no CORS answer names
    it. `template` is COMFYHUB_INSTANCE_ORIGIN: `scheme://host[:port]`, one origin for every
    project, or with `{project}` in the host, one per project. Empty: the host the browser
    used for comfyhub, on `port` (the instance listener), so `comfyhub serve` works as is on
    127.0.0.1, localhost or a LAN address alike.
    """

    def __init__(self, template: str, port: int):
        self.template = template.rstrip("/").lower()
        self.port = port
        self.per_project = _PROJECT in self.template
        pattern = re.escape(self.template).replace(re.escape(_PROJECT), r"([1-9][0-9]{0,9})")
        self._pattern = re.compile(pattern) if self.template else None
        self._host_pattern = None
        if self.per_project:  # the host name alone: a Host header may or may not carry the port
            host = _hostname(self.template.split("//", 1)[1])
            self._host_pattern = re.compile(re.escape(host).replace(re.escape(_PROJECT), r"([1-9][0-9]{0,9})"))

    def url(self, project_id: int, scheme: str, main_host: str) -> str:
        """The instance origin of `project_id`, for a browser that reached comfyhub as `main_host`."""
        if self.template:
            return self.template.replace(_PROJECT, str(project_id))
        hostname = _hostname(main_host) or "127.0.0.1"
        if ":" in hostname:
            hostname = f"[{hostname}]"
        return f"{'https' if scheme in ('https', 'wss') else 'http'}://{hostname}:{self.port}"

    def names(self, source: str | None) -> bool:
        """Whether an Origin (or Referer) is an instance origin: a page of ComfyUI's."""
        if not source or source == "null":
            return False
        parts = urlsplit(source)
        if self._pattern is not None:
            return self._pattern.fullmatch(f"{parts.scheme}://{parts.netloc}".lower()) is not None
        try:
            return parts.port == self.port
        except ValueError:
            return False

    def project_of_host(self, host: str) -> int | None:
        """With one origin per project: the project a Host names (None when it names none)."""
        match = self._host_pattern.fullmatch(_hostname(host.lower())) if self._host_pattern else None
        return int(match.group(1)) if match else None


def _hostname(host: str) -> str:
    """The name in a Host header, without the port (and without IPv6 brackets)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host
