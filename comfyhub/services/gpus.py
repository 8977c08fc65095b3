"""Which GPU a new instance gets (COMFYUI_GPUS = auto | none | 0,1,…).

- `none`, or `auto` on a machine where NVML finds no GPU: no CUDA_VISIBLE_DEVICES, and
  ComfyUI gets `--cpu`.
- `auto`: GPUs listed through NVML (nvidia-ml-py). The pick is the GPU with the most
  free memory, where every live instance already placed on a GPU counts as
  RESERVED_PER_INSTANCE of it. Why memory rather than counts alone: instances differ
  widely (an idle ComfyUI holds ~0.5 GiB, one running SDXL 10+ GiB), so free memory is
  the better measure of load — but a just-started instance has not allocated anything
  yet, so concurrent starts would all pick the same GPU without the reservation.
- a list (`0,1`): those ids, the one with the fewest live instances (lowest id on ties);
  NVML is not needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("comfyhub.gpus")

RESERVED_PER_INSTANCE = 2 << 30  # 2 GiB


@dataclass(frozen=True)
class Gpu:
    id: str
    name: str
    memory_free: int
    memory_total: int


def _load_nvml():
    try:
        import pynvml  # from nvidia-ml-py
    except ImportError:
        return None
    return pynvml


class GpuPicker:
    def __init__(self, setting: str, nvml=None):
        self.setting = setting
        self._nvml = nvml if nvml is not None else (_load_nvml() if setting == "auto" else None)
        # Why NVML gave no GPU (its own message), after a look that failed; None otherwise.
        self.nvml_error: str | None = None
        self._warned = False

    def list_gpus(self) -> list[Gpu]:
        """The GPUs NVML sees (blocking, fast); empty when there is no NVML or no GPU.

        Quiet: each caller says what a failure means to it, once — `comfyhub doctor` in its
        gpus line, the server in its log at the first start (`pick`). A CLI command that
        only looks must not print NVML's complaint on every run.
        """
        if self._nvml is None:
            return []
        nvml = self._nvml
        try:
            nvml.nvmlInit()
            try:
                gpus = []
                for i in range(nvml.nvmlDeviceGetCount()):
                    handle = nvml.nvmlDeviceGetHandleByIndex(i)
                    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                    name = nvml.nvmlDeviceGetName(handle)
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    gpus.append(Gpu(str(i), name, int(mem.free), int(mem.total)))
                return gpus
            finally:
                nvml.nvmlShutdown()
        except Exception as exc:  # noqa: BLE001 — NVML raises its own error types; any means "no GPU"
            self.nvml_error = str(exc) or type(exc).__name__
            return []

    def pick(self, live_per_gpu: dict[str, int]) -> str | None:
        """The GPU id for the next instance, or None for the CPU."""
        if self.setting == "none":
            return None
        if self.setting != "auto":
            ids = self.setting.split(",")
            return min(ids, key=lambda g: (live_per_gpu.get(g, 0), int(g)))
        gpus = self.list_gpus()
        if not gpus:
            if self.nvml_error and not self._warned:
                log.warning("NVML unavailable (%s): instances run on the CPU", self.nvml_error)
                self._warned = True
            return None
        best = max(gpus, key=lambda g: (g.memory_free - RESERVED_PER_INSTANCE * live_per_gpu.get(g.id, 0), -int(g.id)))
        return best.id
