"""comfyhub's extension inside ComfyUI: the instance answers only to comfyhub, and can be bound once.

This file runs inside ComfyUI's Python, which does not have comfyhub installed: it may use
only the standard library, aiohttp and ComfyUI's own `server` and `folder_paths`. comfyhub
copies it into every instance folder (``.comfyhub/custom_nodes/comfyhub_extension/``) and
names that folder to ComfyUI with ``--extra-model-paths-config`` (docs/architecture.md,
"The comfyhub extension"). ComfyUI imports it like any custom node package.

At import, when ``COMFYHUB_SECRET_FILE`` names a readable file, it reads the instance
secret from it once and installs, on ComfyUI's aiohttp app (not yet frozen at custom-node
import time: the app is built in PromptServer.__init__, the nodes are loaded after it,
and the runner freezes the app only when the server starts):

* a middleware, first in the chain, that answers 403 (plain text, no detail) to every
  request without header ``X-Comfyhub-Secret: <secret>`` -- pages, static files, the
  ``/ws`` handshake and unknown paths alike;
* on every answer to an admitted request ``X-Comfyhub-Instance: sha256(secret)`` and
  ``X-Comfyhub-Binding: <project id or empty>`` (via on_response_prepare, so a WebSocket
  handshake and a streamed file carry them too);
* ``GET /comfyhub/identity`` and ``POST /comfyhub/bind`` (bound once, never rebound).

Without the variable it does nothing, so a ComfyUI started by hand works as before.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

SECRET_FILE_ENV = "COMFYHUB_SECRET_FILE"
SECRET_HEADER = "X-Comfyhub-Secret"
INSTANCE_HEADER = "X-Comfyhub-Instance"
BINDING_HEADER = "X-Comfyhub-Binding"
DIR_KINDS = ("output", "input", "temp", "user")


def read_secret(path: str) -> str:
    """The secret in `path` (surrounding whitespace dropped); "" when unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


class Guard:
    """The secret check, the identity headers and the binding of one ComfyUI process."""

    def __init__(self, secret: str, folder_paths):
        self._secret = secret.encode()
        self.secret_sha256 = hashlib.sha256(self._secret).hexdigest()
        self.folder_paths = folder_paths
        self.binding: dict | None = None

    def install(self, app) -> None:
        """Put the check first in `app`'s middlewares and add the routes. `app` must not be frozen."""
        from aiohttp import web

        guard = self

        @web.middleware
        async def comfyhub_secret(request, handler):
            if not guard.admits(request):
                return web.Response(status=403, text="403: Forbidden")
            return await handler(request)

        async def identity_headers(request, response) -> None:
            if guard.admits(request):  # not for a refusal: it says nothing to a stranger
                response.headers[INSTANCE_HEADER] = guard.secret_sha256
                response.headers[BINDING_HEADER] = str(guard.binding["project_id"]) if guard.binding else ""

        app.middlewares.insert(0, comfyhub_secret)
        app.on_response_prepare.append(identity_headers)
        app.router.add_get("/comfyhub/identity", self.identity)
        app.router.add_post("/comfyhub/bind", self.bind)

    def admits(self, request) -> bool:
        # Checked again when the answer goes out rather than marked on the request: request
        # storage keys changed across aiohttp versions, and ComfyUI pins none.
        return hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode(), self._secret)

    async def identity(self, request):
        from aiohttp import web

        return web.json_response({"secret_sha256": self.secret_sha256, "binding": self.binding, "argv": sys.argv})

    async def bind(self, request):
        from aiohttp import web

        try:
            wanted = parse_binding(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if self.binding is not None:
            return web.json_response({"error": "already bound", "binding": self.binding}, status=409)
        try:
            for kind in DIR_KINDS:
                os.makedirs(wanted["dirs"][kind], exist_ok=True)
        except OSError as exc:
            return web.json_response({"error": f"cannot create folder: {exc.strerror}"}, status=400)
        fp = self.folder_paths
        fp.set_output_directory(wanted["dirs"]["output"])
        fp.set_input_directory(wanted["dirs"]["input"])
        fp.set_temp_directory(wanted["dirs"]["temp"])
        fp.set_user_directory(wanted["dirs"]["user"])
        self.binding = wanted
        return web.json_response({"binding": wanted})


def parse_binding(body) -> dict:
    """{"project_id": int, "user_id": int, "dirs": {output, input, temp, user: absolute path}}."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    ids = {}
    for key in ("project_id", "user_id"):
        value = body.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer")
        ids[key] = value
    dirs = body.get("dirs")
    if not isinstance(dirs, dict) or set(dirs) != set(DIR_KINDS):
        raise ValueError(f"dirs must have exactly the keys {', '.join(DIR_KINDS)}")
    clean = {}
    for kind in DIR_KINDS:
        path = dirs[kind]
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise ValueError(f"dirs.{kind} must be an absolute path")
        clean[kind] = os.path.normpath(path)
    return {**ids, "dirs": clean}


def _install_into_comfyui() -> Guard | None:
    path = os.environ.get(SECRET_FILE_ENV)
    if not path:
        return None  # started by hand: ComfyUI as usual
    secret = read_secret(path)
    if not secret:
        # Named but unreadable: refuse everything rather than serve without the check.
        print(f"[comfyhub] cannot read the instance secret from {path}: every request will be refused", flush=True)
        secret = os.urandom(32).hex()
    import folder_paths  # ComfyUI's own modules, present when ComfyUI imports this package
    import server

    guard = Guard(secret, folder_paths)
    guard.install(server.PromptServer.instance.app)
    print("[comfyhub] extension loaded: requests need the instance secret", flush=True)
    return guard


GUARD = _install_into_comfyui()
