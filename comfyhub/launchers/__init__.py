"""Launchers run ComfyUI processes; see base.py for the contract."""

from __future__ import annotations

from typing import TYPE_CHECKING

from comfyhub.launchers.base import Exit, Handle, Launcher, LaunchError, LaunchSpec, PortInUse

if TYPE_CHECKING:  # the settings only name a type here: importing the package (the
    # heartbeat's prober process does) must not load the settings machinery
    from comfyhub.config import Settings


def connect_host(listen: str) -> str:
    """Where this machine reaches an instance listening on `listen` (wildcards → loopback)."""
    if listen in ("", "0.0.0.0"):
        return "127.0.0.1"
    if listen == "::":
        return "::1"
    return listen


def make_launcher(settings: Settings) -> Launcher:
    if settings.comfyui_launcher == "ray":
        from comfyhub.launchers.ray import RayLauncher  # optional dependency

        return RayLauncher(settings)
    from comfyhub.launchers.local import LocalLauncher

    return LocalLauncher(connect_host(settings.comfyui_listen))


__all__ = ["Exit", "Handle", "LaunchError", "LaunchSpec", "Launcher", "PortInUse", "connect_host", "make_launcher"]
