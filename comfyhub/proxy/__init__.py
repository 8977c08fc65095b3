"""The authenticated reverse proxy to the instances: gateway (ASGI), access (who may
pass, where to), relay (large downloads in a thread), refusals (a page for a browser,
the API's JSON envelope for a script) and pages (what the browser sees)."""

from comfyhub.net.http1 import UpstreamPool
from comfyhub.proxy.access import ProxyAccess
from comfyhub.proxy.gateway import ComfyProxy

__all__ = ["ComfyProxy", "ProxyAccess", "UpstreamPool"]
