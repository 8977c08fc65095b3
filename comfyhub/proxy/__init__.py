"""The authenticated reverse proxy to the instances: gateway (ASGI), access (who may
pass, where to), upstream (HTTP client to ComfyUI), pages (what the browser sees
when an instance is not there)."""

from comfyhub.net.http1 import UpstreamPool
from comfyhub.proxy.access import ProxyAccess
from comfyhub.proxy.gateway import ComfyProxy

__all__ = ["ComfyProxy", "ProxyAccess", "UpstreamPool"]
