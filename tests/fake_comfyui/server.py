"""The fake's stand-in for ComfyUI's `server` module: `PromptServer.instance.app` is the
aiohttp application, set before custom nodes are loaded, as in ComfyUI 0.3.64."""

from __future__ import annotations


class PromptServer:
    instance: PromptServer | None = None

    def __init__(self, app):
        PromptServer.instance = self
        self.app = app
