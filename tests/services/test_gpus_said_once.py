"""Where NVML's failure is said: once in the server log at the first start, never on a look."""

import logging

from comfyhub.services.gpus import GpuPicker


class BrokenNvml:
    def nvmlInit(self):
        raise RuntimeError("NVML Shared Library Not Found")


def test_a_look_is_quiet_and_remembers_why(caplog):
    picker = GpuPicker("auto", nvml=BrokenNvml())
    with caplog.at_level(logging.DEBUG, logger="comfyhub.gpus"):
        assert picker.list_gpus() == []
    assert caplog.records == []
    assert picker.nvml_error == "NVML Shared Library Not Found"


def test_starts_log_it_once(caplog):
    picker = GpuPicker("auto", nvml=BrokenNvml())
    with caplog.at_level(logging.WARNING, logger="comfyhub.gpus"):
        assert picker.pick({}) is None and picker.pick({}) is None
    assert [r.getMessage() for r in caplog.records] == [
        "NVML unavailable (NVML Shared Library Not Found): instances run on the CPU"
    ]
