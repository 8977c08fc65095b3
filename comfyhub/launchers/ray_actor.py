"""The Ray actor that owns one instance's ComfyUI process on the node Ray placed it on.

Imported by Ray workers on every node, so it needs only the standard library, psutil
and comfyhub's process helpers (comfyhub must be installed on the nodes). Each method
returns plain data: errors come back as {"error": words, "reason": code} rather than exceptions, so
that the reason reaches the user unwrapped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from comfyhub.launchers import process
from comfyhub.launchers.base import LaunchError, with_argv_value
from comfyhub.net.ports import port_is_free
from comfyhub.reasons import Reason


class ComfyUIActor:
    """Started with ``start``; ``poll`` says whether ComfyUI still runs; ``stop`` ends it.

    ComfyUI runs in its own process group with a parent-death signal, so it also ends
    when this actor is killed (``ray.kill``, node lost) without a chance to stop it.
    """

    def __init__(self) -> None:
        self._proc = None
        self._info: dict | None = None

    def start(
        self,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        log_path: str,
        port: int,
        base_dir: str,
        instance: str,
        secret: str = "",
    ) -> dict:
        import ray

        host = ray.util.get_node_ip_address()
        if not os.path.isdir(base_dir):
            return {
                "reason": Reason.INSTANCE_DIR,
                "error": f"节点 {host} 上找不到实例目录 {base_dir}："
                "COMFYUI_INSTANCE_BASE_DIR 必须放在所有节点共享的文件系统上",
            }
        if not port_is_free(host, port):
            return {"port_in_use": True, "host": host}
        # On a node ComfyUI must be reachable from the comfyhub host, not only from itself.
        argv = with_argv_value(argv, "--listen", host)
        try:
            # The secret came as a call argument (never on a command line); it goes into
            # a 0600 file on this node, as with the local launcher.
            delivery = process.deliver_secret(base_dir, secret)
            self._proc = process.spawn(
                argv, Path(cwd), process.child_environment({**env, **delivery}), Path(log_path), die_with_parent=True
            )
        except OSError as exc:
            return {"reason": Reason.INSTANCE_DIR, "error": f"节点 {host} 上无法写入实例目录：{exc.strerror}"}
        except LaunchError as exc:
            return {"reason": exc.reason, "error": f"{exc}（节点 {host}）"}
        self._info = {
            "pid": self._proc.pid,
            "create_time": process.create_time(self._proc.pid, time.time()),
            "cmdline": argv,
            "host": host,
            "port": port,
            # Ray chose the GPUs of this actor and says which in CUDA_VISIBLE_DEVICES.
            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "extra": {"node_id": ray.get_runtime_context().get_node_id(), "log_path": log_path, "instance": instance},
        }
        return self._info

    def describe(self) -> dict | None:
        """What ``start`` returned, or None before it ran."""
        return self._info

    def poll(self) -> int | None:
        """None while ComfyUI runs (or before it started); its exit code once it ended."""
        if self._proc is None:
            return None
        return self._proc.poll()

    def stop(self, grace: float) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL to the group; returns the exit code."""
        if self._proc is None:
            return None
        for sig, wait in process.stop_steps(grace):
            if self._proc.poll() is not None or not process.signal_group(self._proc.pid, sig):
                break
            deadline = time.monotonic() + wait
            while self._proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        return self._proc.poll()
