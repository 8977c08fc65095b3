"""Running the app: its two listeners (comfyhub's port and the instance origin's) bound
once, then uvicorn with one worker or several, each accepting on both."""

from __future__ import annotations

import logging
import os
import socket
import sys

from comfyhub.config import Settings


def serve(settings: Settings, host: str, port: int, workers: int, log_level: str) -> int:
    """Serve until interrupted; the exit status (2: a port cannot be bound, 3: no start)."""
    import uvicorn

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The instance origin's port, resolved once here: every worker reads it from the
    # environment (the app tells its two listeners apart by the port a request came in on).
    instance_port = settings.comfyhub_instance_port or port + 1
    os.environ["COMFYHUB_INSTANCE_PORT"] = str(instance_port)
    if instance_port == port:
        print("comfyhub: COMFYHUB_INSTANCE_PORT must differ from --port", file=sys.stderr)
        return 2
    try:
        sockets = [
            bind_listener(host, port, "comfyhub"),
            bind_listener(host, instance_port, "instance origin"),
        ]
    except OSError as exc:
        print(f"comfyhub: {exc}", file=sys.stderr)
        return 2
    shown = settings.comfyhub_instance_origin or f"http://{_url_host(host)}:{instance_port}"
    print(f"comfyhub: serving on http://{_url_host(host)}:{port}", flush=True)
    print(f"comfyhub: ComfyUI (the instance origin) on port {instance_port}, reached as {shown}", flush=True)
    config = uvicorn.Config(
        "comfyhub.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        # uvicorn rewrites the scheme and client address from X-Forwarded-* only for these
        # peers: a TLS-terminating proxy in front makes the session cookie Secure.
        proxy_headers=bool(settings.comfyhub_forwarded_allow_ips.strip()),
        forwarded_allow_ips=settings.comfyhub_forwarded_allow_ips.strip() or None,
    )
    # Both sockets are bound here, once: with --workers N every worker accepts on both
    # (uvicorn's own `run` binds one socket only).
    server = uvicorn.Server(config)
    try:
        if workers > 1:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=sockets).run()
        else:
            server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    if workers == 1 and not server.started:
        return 3
    return 0


def bind_listener(host: str, port: int, what: str) -> socket.socket:
    """A bound TCP socket, as uvicorn's own (SO_REUSEADDR, inheritable by the workers)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
