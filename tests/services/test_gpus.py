"""GPU choice with a fake NVML (the real one needs a GPU machine)."""

from types import SimpleNamespace

from comfyhub.services.gpus import RESERVED_PER_INSTANCE, GpuPicker

GIB = 1 << 30


class FakeNvml:
    def __init__(self, free_gib: list[float], total_gib: float = 80, fail: bool = False):
        self.free, self.total, self.fail = free_gib, total_gib, fail
        self.initialised = 0

    def nvmlInit(self):
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")
        self.initialised += 1

    def nvmlShutdown(self):
        self.initialised -= 1

    def nvmlDeviceGetCount(self):
        return len(self.free)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, i):
        return SimpleNamespace(free=int(self.free[i] * GIB), total=int(self.total * GIB))

    def nvmlDeviceGetName(self, i):
        return b"NVIDIA H200"


def test_auto_picks_most_free_memory():
    picker = GpuPicker("auto", nvml=FakeNvml([10, 70, 40]))
    assert picker.pick({}) == "1"
    assert [g.name for g in picker.list_gpus()] == ["NVIDIA H200"] * 3


def test_auto_counts_instances_not_yet_using_memory():
    # GPU 1 has a little more free memory but two instances just started on it.
    picker = GpuPicker("auto", nvml=FakeNvml([60, 61]))
    assert picker.pick({"1": 2}) == "0"
    assert RESERVED_PER_INSTANCE == 2 * GIB


def test_auto_without_nvml_or_gpus_means_cpu():
    assert GpuPicker("auto", nvml=FakeNvml([], fail=True)).pick({}) is None
    assert GpuPicker("auto", nvml=FakeNvml([])).pick({}) is None


def test_auto_shuts_nvml_down_after_each_look():
    nvml = FakeNvml([1, 2])
    GpuPicker("auto", nvml=nvml).pick({})
    assert nvml.initialised == 0


def test_explicit_list_spreads_by_instance_count():
    picker = GpuPicker("2,3")
    assert picker.pick({}) == "2"
    assert picker.pick({"2": 1}) == "3"
    assert picker.pick({"2": 1, "3": 1}) == "2"


def test_none_is_cpu():
    assert GpuPicker("none").pick({"0": 0}) is None
