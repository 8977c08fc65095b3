"""The hand-off between comfyhub's origin and the instance origin (docs/architecture.md,
"Two origins").

On the main origin, GET /comfy/{id}/… from the project's owner (a login session, by
cookie or bearer) answers 303 to `{instance origin}/_comfyhub/enter/{id}?code=…&next=…`
with a fresh one-time code (comfyhub/handoff.py). Nothing else under /comfy/ is served
there: a WebSocket, a write or a script's access token is told where ComfyUI is.

On the instance origin, /_comfyhub/enter/{id} trades the code, once, for the instance
cookie (HttpOnly, SameSite=Lax, host-only: no Domain) and answers 303 to /comfy/{id}/….
The code travels in a URL, so both answers say `Referrer-Policy: no-referrer`; it is
single-use and lives seconds, so a copy in a log or the history is worth nothing.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode

from comfyhub import handoff
from comfyhub.models import utcnow
from comfyhub.proxy import refusals
from comfyhub.security import INSTANCE_COOKIE, is_api_token, session_token

ENTER = "/_comfyhub/enter/"
_ENTER_PATH = re.compile(r"^/_comfyhub/enter/(\d{1,10})$")
_PREFIX = "/comfy/"
_MAX_NEXT = 2048
_NO_STORE = [(b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer")]


async def hand_off(proxy, scope, receive, send, project_id: int, headers: dict[bytes, bytes]) -> None:
    """Main origin, /comfy/{id}/…: send the owner to the instance origin with a code."""
    host = headers.get(b"host", b"").decode("latin-1")
    url = proxy.origin.url(project_id, scope.get("scheme", "http"), host)
    if scope["type"] == "websocket" or scope["method"] not in ("GET", "HEAD"):
        return await refusals.refuse(scope, receive, send, refusals.elsewhere(url), project_id, headers)
    if _from_instance_page(proxy, headers):
        # A ComfyUI page must not learn codes for other projects (or anything else) here.
        return await refusals.refuse_http(send, refusals.CROSS_SITE, headers)
    token, _ = session_token(
        headers.get(b"authorization", b"").decode("latin-1"), headers.get(b"cookie", b"").decode("latin-1")
    )
    if is_api_token(token):
        return await refusals.refuse_http(send, refusals.elsewhere(url), headers)
    user_id = await proxy.access.user_id(token)
    if user_id is None:
        return await refusals.refuse_http(send, refusals.NOT_LOGGED_IN, headers)
    target = await proxy.access.target(project_id)
    if target is None:
        return await refusals.refuse_http(send, refusals.NO_SUCH_PROJECT, headers)
    if target.owner_user_id != user_id:
        return await refusals.refuse_http(send, refusals.NOT_OWNER, headers)
    code = await proxy.access.entry_code(token, project_id)
    if code is None:
        return await refusals.refuse_http(send, refusals.NOT_LOGGED_IN, headers)
    query = {"code": code}
    rest = _rest(scope, project_id)
    if rest:
        query["next"] = rest
    location = f"{url}{ENTER}{project_id}?{urlencode(query)}"
    await refusals.respond(send, 303, [(b"location", location.encode("latin-1")), *_NO_STORE], b"")


async def enter(proxy, scope, receive, send, headers: dict[bytes, bytes]) -> None:
    """Instance origin, /_comfyhub/enter/{id}?code=…: the code, once, for the instance cookie."""
    match = _ENTER_PATH.match(scope["path"])
    if scope["type"] != "http" or match is None or scope["method"] not in ("GET", "HEAD"):
        return await refusals.refuse(scope, receive, send, refusals.NOT_HERE, None, headers)
    project_id = int(match.group(1))
    host = headers.get(b"host", b"").decode("latin-1")
    if proxy.origin.per_project and proxy.origin.project_of_host(host) != project_id:
        return await refusals.refuse_http(send, refusals.NO_SUCH_PROJECT, headers)
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    found = await proxy.access.redeem(query.get("code", [""])[0], project_id)
    if found is None:
        return await refusals.refuse_http(send, refusals.ENTRY_USED, headers)
    value = handoff.instance_cookie(proxy.access.secret_key, found, project_id if proxy.origin.per_project else None)
    max_age = max(0, int((found.expires_at - utcnow()).total_seconds()))
    cookie = f"{INSTANCE_COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"
    scheme = scope.get("scheme", "http")
    if scheme == "https" or proxy.origin.url(project_id, scheme, host).startswith("https://"):
        cookie += "; Secure"
    rest = query.get("next", [""])[0]
    location = f"{_PREFIX}{project_id}/" + (rest if _safe(rest) else "")
    await refusals.respond(
        send,
        303,
        [(b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1")), *_NO_STORE],
        b"",
    )


def _from_instance_page(proxy, headers: dict[bytes, bytes]) -> bool:
    return any(proxy.origin.names(headers.get(name, b"").decode("latin-1")) for name in (b"origin", b"referer"))


def _rest(scope, project_id: int) -> str:
    """What follows /comfy/{id}/ in the request, query included, as the browser sent it."""
    raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    rest = raw[len(f"{_PREFIX}{project_id}/") :]
    query = scope.get("query_string", b"").decode("latin-1")
    if query and "?" not in rest:
        rest += "?" + query
    return rest


def _safe(rest: str) -> bool:
    """A path (and query) to follow /comfy/{id}/ in a Location: visible ASCII, no backslash,
    bounded; it cannot leave the project's prefix, which the Location starts with."""
    return len(rest) <= _MAX_NEXT and all("!" <= c <= "~" and c != "\\" for c in rest)
