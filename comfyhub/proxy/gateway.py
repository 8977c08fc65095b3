"""/comfy/{project_id}/… : each instance reachable by its owner only (invariant 6), on the
instance origin only (invariant 10).

A pure ASGI middleware in front of the FastAPI routes: requests under /comfy/ never go
through routing or dependency injection, which keeps the added latency small. On
comfyhub's own origin `__call__` only hands the browser over to the instance origin
(entry.py). On the instance origin `instance` serves: authenticate (the instance cookie,
or a bearer token; never the session cookie), check ownership, then forward to the
instance, the request and its answer rewritten by rewrite.py (prefix stripped, the
browser's Host kept, comfyhub's own credentials never passed on).
Large downloads (Content-Length ≥ 1 MiB, bodyless request) leave the event loop after
the response head: a thread moves the body socket to socket (relay.py).
A request that is not passed on is refused with a page for a browser and the API's JSON
envelope for a script (refusals.py); a refused WebSocket is logged once, at INFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from comfyhub.models import ServiceStatus
from comfyhub.net.http1 import UpstreamConnection, UpstreamError, UpstreamPool
from comfyhub.proxy import entry, refusals, rewrite
from comfyhub.proxy.access import ProxyAccess, Target
from comfyhub.proxy.refusals import Refusal
from comfyhub.proxy.relay import RELAY_MIN, Relays
from comfyhub.security import (
    INSTANCE_COOKIE,
    InstanceOrigin,
    bearer_token,
    cookie_value,
    origin_required,
    same_origin,
)

log = logging.getLogger("comfyhub.proxy")

_HEAD_TIMEOUT = 300.0  # ComfyUI answers quickly; only a wedged instance takes this long
MAX_ID = 2**31 - 1


class ComfyProxy:
    """ASGI middleware: handles /comfy/…, passes everything else to `app`."""

    def __init__(self, app, hub):
        self.app = app
        self.hub = hub  # the FastAPI app: its lifespan puts the parts below in hub.state

    @property
    def access(self) -> ProxyAccess:
        return self.hub.state.proxy_access

    @property
    def pool(self) -> UpstreamPool:
        return self.hub.state.upstream_pool

    def touch(self, project_id: int) -> None:
        self.hub.state.manager.touch(project_id)

    def confirm(self, target: Target) -> None:
        """The instance answered: an open within the next second need not check it again."""
        self.hub.state.manager.liveness.confirm(target.project_id, target.generation)

    @property
    def metrics(self):
        return self.hub.state.metrics

    @property
    def relays(self) -> Relays:
        relays = self.__dict__.get("_relays")
        if relays is None:
            relays = self._relays = Relays(self.metrics)
        return relays

    @property
    def origin(self) -> InstanceOrigin:
        origin = self.__dict__.get("_origin")
        if origin is None:
            settings = self.hub.state.settings
            origin = self._origin = InstanceOrigin(settings.comfyhub_instance_origin, settings.instance_port)
        return origin

    async def __call__(self, scope, receive, send):
        """The main origin: /comfy/{id}/… only leads to the instance origin (entry.py)."""
        if scope["type"] not in ("http", "websocket") or not scope["path"].startswith(rewrite.PREFIX):
            return await self.app(scope, receive, send)
        parsed = await self._parse(scope, receive, send)
        if parsed is not None:
            await entry.hand_off(self, scope, receive, send, *parsed)

    async def instance(self, scope, receive, send):
        """The instance origin: ComfyUI under /comfy/{id}/…, the hand-off's entry, nothing else."""
        if scope["type"] not in ("http", "websocket"):
            return
        if scope["path"].startswith(entry.ENTER):
            return await entry.enter(self, scope, receive, send, rewrite.header_map(scope))
        if not scope["path"].startswith(rewrite.PREFIX):
            return await refusals.refuse(scope, receive, send, refusals.NOT_HERE, None, rewrite.header_map(scope))
        parsed = await self._parse(scope, receive, send)
        if parsed is None:
            return
        project_id, headers = parsed
        target, refusal = await self._authorize(scope, project_id, headers)
        if target is None:
            return await refusals.refuse(scope, receive, send, refusal, project_id, headers)
        upstream_path = rewrite.upstream_path(scope, project_id)
        if scope["type"] == "websocket":
            return await self._websocket(scope, receive, send, target, upstream_path)
        return await self._http(scope, receive, send, target, upstream_path, headers)

    async def _parse(self, scope, receive, send) -> tuple[int, dict[bytes, bytes]] | None:
        """The project id of a /comfy/{id}/… path and the headers; None once answered."""
        match = rewrite.PATH.match(scope["path"])
        if match is None or int(match.group(1)) > MAX_ID:
            await refusals.refuse(scope, receive, send, refusals.BAD_PROJECT_ID, None, rewrite.header_map(scope))
            return None
        project_id, rest = int(match.group(1)), match.group(2)
        if rest is None and scope["type"] == "http":
            # The ComfyUI front end resolves its assets relative to a trailing slash.
            query = scope.get("query_string", b"")
            location = f"{rewrite.PREFIX}{project_id}/" + (f"?{query.decode('latin-1')}" if query else "")
            await refusals.respond(send, 308, [(b"location", location.encode("latin-1"))], b"")
            return None
        return project_id, rewrite.header_map(scope)

    # --- access ---------------------------------------------------------------------------

    async def _authorize(
        self, scope, project_id: int, headers: dict[bytes, bytes]
    ) -> tuple[Target, None] | tuple[None, Refusal]:
        """On the instance origin: a bearer token (scripts) or the instance cookie, never
        comfyhub's session cookie (with one origin on another port of the same host the
        browser sends it here too: it is no credential here)."""
        host = headers.get(b"host", b"").decode("latin-1")
        if self.origin.per_project and self.origin.project_of_host(host) != project_id:
            return None, refusals.NO_SUCH_PROJECT  # p12's origin serves project 12 alone
        bearer = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        if bearer is not None:
            user_id, from_cookie = await self.access.user_id(bearer), False
        else:
            cookie = cookie_value(headers.get(b"cookie", b"").decode("latin-1"), INSTANCE_COOKIE)
            found = await self.access.instance_pass(cookie)
            if found is not None and found.project_id not in (None, project_id):
                return None, refusals.NOT_OWNER  # a cookie of another project's origin
            user_id, from_cookie = (found.user_id if found else None), True
        if user_id is None:
            return None, refusals.NOT_LOGGED_IN
        target = await self.access.target(project_id)
        if target is None:
            return None, refusals.NO_SUCH_PROJECT
        if target.owner_user_id != user_id:
            return None, refusals.NOT_OWNER
        websocket = scope["type"] == "websocket"  # a handshake: no method, and not "safe"
        if origin_required(from_cookie, scope.get("method", ""), websocket) and not self._from_instance_page(
            scope, project_id, headers
        ):
            return None, refusals.CROSS_SITE
        return target, None

    def _from_instance_page(self, scope, project_id: int, headers: dict[bytes, bytes]) -> bool:
        """Whether a request comes from a page of this project's instance origin (not from
        comfyhub's own pages, nor COMFYHUB_TRUSTED_ORIGINS: those are the main origin's)."""
        origin, referer = headers.get(b"origin"), headers.get(b"referer")
        host = headers.get(b"host", b"").decode("latin-1")
        return same_origin(
            origin and origin.decode("latin-1"),
            referer and referer.decode("latin-1"),
            host,
            {self.origin.url(project_id, scope.get("scheme", "http"), host)},
        )

    # --- HTTP -------------------------------------------------------------------------------

    async def _http(self, scope, receive, send, target: Target, path: bytes, headers: dict[bytes, bytes]):
        if target.status != ServiceStatus.ONLINE or not target.port:
            return await refusals.refuse_http(send, refusals.not_running(target.status), headers)
        self.touch(target.project_id)
        request_head, body_framing = rewrite.request_head(scope, path, headers, target.secret)
        has_body = body_framing or headers.get(b"content-length", b"0").strip() not in (b"0", b"")
        try:
            conn = await self.pool.acquire(target.host, target.port)
        except UpstreamError:
            # Maybe stopped or moved since the route was cached: look again once.
            self.access.forget_target(target.project_id)
            fresh = await self.access.target(target.project_id)
            if fresh is not None and fresh.status != ServiceStatus.ONLINE:
                return await self._http(scope, receive, send, fresh, path, headers)
            return await refusals.refuse_http(send, refusals.unreachable(), headers)
        conn._head_request = scope["method"] == "HEAD"
        if has_body:
            pump = asyncio.create_task(self._pump_request(receive, conn, request_head, body_framing))
        else:
            # No body (every GET): the head goes out now, no task; the browser is watched
            # only while a body is still streaming once the head has arrived.
            pump = None
            conn.transport.write(request_head)
            conn.request_sent = True
        try:
            status, headers = await conn.response_head(_HEAD_TIMEOUT)
        except UpstreamError:
            if pump is not None:
                pump.cancel()
            conn.close()
            self.access.forget_target(target.project_id)
            return await refusals.refuse_http(send, refusals.unreachable(), headers)
        self.confirm(target)
        relay_to = None
        if pump is None and not conn.complete:
            length = conn.body_length
            if length is not None and length >= RELAY_MIN and conn.body_left:
                # A large download: its body may go socket to socket in a thread (relay.py).
                relay_to = self.relays.client_of(scope, send)
            if relay_to is None:
                pump = asyncio.create_task(self._watch_disconnect(receive, conn))
        await send({"type": "http.response.start", "status": status, "headers": rewrite.response_headers(headers)})
        if relay_to is not None:
            progress = await self.relays.relay(relay_to, conn, length)
            if progress is not None:
                self._bytes_counter("out").inc(progress.sent)
                if progress.error is None:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    self.pool.release(conn)
                else:
                    # Both connections are closed already; one loop turn lets uvicorn see its
                    # side closed, so it does not log the short response as an app error.
                    await asyncio.sleep(0)
                return
            pump = asyncio.create_task(self._watch_disconnect(receive, conn))  # not taken: as usual
        try:
            sent = 0
            async for chunk in conn.body_chunks():
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._bytes_counter("out").inc(sent)
        except UpstreamError:
            conn.close()  # the instance (or the browser) broke off mid-body
            if pump is not None:
                pump.cancel()
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if pump is not None:
            pump.cancel()
        if not conn.request_sent:
            conn.close()  # the instance answered before reading the whole request
        self.pool.release(conn)

    async def _watch_disconnect(self, receive, conn: UpstreamConnection) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not conn.complete:
            conn.close()

    def _bytes_counter(self, direction: str):
        counters = self.__dict__.setdefault("_bytes_counters", {})
        counter = counters.get(direction)
        if counter is None:
            counter = counters[direction] = self.metrics.proxy_bytes.labels(direction)
        return counter

    async def _pump_request(self, receive, conn: UpstreamConnection, head: bytes, chunked: bool) -> None:
        """Send the request head and stream the body, then watch for the browser leaving."""
        try:
            await conn.write(head)
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    conn.close()
                    return
                body = message.get("body", b"")
                more = message.get("more_body", False)
                if chunked:
                    if body:
                        await conn.write(b"%x\r\n%b\r\n" % (len(body), body))
                    if not more:
                        await conn.write(b"0\r\n\r\n")
                elif body:
                    await conn.write(body)
                self._bytes_counter("in").inc(len(body))
            conn.request_sent = True
            # A browser that goes away mid-download ends the transfer from the instance too.
            if (await receive())["type"] == "http.disconnect" and not conn.complete:
                conn.close()
        except UpstreamError:
            return

    # --- WebSocket ------------------------------------------------------------------------

    async def _websocket(self, scope, receive, send, target: Target, path: bytes):
        headers = rewrite.header_map(scope)
        if target.status != ServiceStatus.ONLINE or not target.port:
            return await refusals.refuse(
                scope, receive, send, refusals.not_running(target.status), target.project_id, headers
            )
        host = headers.get(b"host", b"localhost").decode("latin-1")
        extra = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in rewrite.forwarded(scope, headers)]
        extra += target.endpoint.headers()
        subprotocols = [p.strip() for p in headers.get(b"sec-websocket-protocol", b"").decode().split(",") if p.strip()]
        try:
            # The browser's Host goes in the URI (kept as the Host header); the socket
            # goes to the instance through host=/port=.
            upstream = await ws_connect(
                f"ws://{host}{path.decode('latin-1')}",
                host=target.host,
                port=target.port,
                origin=headers.get(b"origin", b"").decode("latin-1") or None,
                additional_headers=extra,
                subprotocols=subprotocols or None,
                compression=None,
                max_size=None,
                ping_interval=None,
                open_timeout=10,
                proxy=None,
            )
        except (TimeoutError, OSError, InvalidHandshake) as exc:
            self.access.forget_target(target.project_id)
            code = exc.response.status_code if isinstance(exc, InvalidStatus) else 502
            return await refusals.refuse(scope, receive, send, refusals.unreachable(code), target.project_id, headers)
        first = await receive()
        if first["type"] != "websocket.connect":
            await upstream.close()
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        self.touch(target.project_id)
        self.metrics.websockets.inc()
        to_client = asyncio.create_task(self._upstream_to_client(upstream, send, target.project_id))
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    self.touch(target.project_id)
                    data = message.get("bytes")
                    await upstream.send(data if data is not None else message.get("text", ""))
                elif message["type"] == "websocket.disconnect":
                    await upstream.close(code=_passable(message.get("code", 1000)))
                    break
        except ConnectionClosed:
            pass
        finally:
            self.metrics.websockets.dec()
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(to_client, 5)
            to_client.cancel()

    async def _upstream_to_client(self, upstream, send, project_id: int) -> None:
        try:
            async for message in upstream:
                self.touch(project_id)
                if isinstance(message, bytes):
                    await send({"type": "websocket.send", "bytes": message})
                else:
                    await send({"type": "websocket.send", "text": message})
        except ConnectionClosed:
            pass
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": _passable(code), "reason": upstream.close_reason or ""})


def _passable(code: int) -> int:
    """Close codes that may be sent on the wire (1005/1006/1015 are reserved)."""
    return code if code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or 3000 <= code <= 4999 else 1000
