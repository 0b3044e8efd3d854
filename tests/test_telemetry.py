"""Telemetry against a stand-in for NVML: the one piece here that cannot exist without a GPU."""

import os
from types import SimpleNamespace

from diffdeck.engines.queue.telemetry import Telemetry, WorkerView


class FakeNVML:
    """The slice of pynvml that telemetry calls, for one 24 GiB GPU with one of our workers on it."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, worker_pid, power_fails=False):
        self.worker_pid, self.power_fails = worker_pid, power_fails

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"gpu{i}"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA Test 24GB"

    def nvmlDeviceGetUUID(self, handle):
        return b"GPU-8f1c2a4e-0000-4000-8000-000000000000"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=6 * 2**30, total=24 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=87)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 71

    def nvmlDeviceGetPowerUsage(self, handle):
        if self.power_fails:
            raise self.NVMLError("not supported")
        return 251_500

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=self.worker_pid, usedGpuMemory=5 * 2**30),
                SimpleNamespace(pid=1, usedGpuMemory=None)]


def test_gpu_and_worker_figures():
    telemetry = Telemetry(FakeNVML(worker_pid=os.getpid()))
    sample = telemetry.sample([WorkerView(os.getpid(), "sdxl", "busy")])
    assert telemetry.has_gpu
    assert sample["gpu_problem"] is None
    assert sample["gpus"] == [{"index": 0, "name": "NVIDIA Test 24GB", "uuid": "GPU-8f1c2a4e-0000-4000-8000-000000000000",
                               "memory_used": 6 * 2**30,
                               "memory_total": 24 * 2**30, "utilization": 87, "temperature": 71,
                               "power_w": 251.5}]
    worker = sample["workers"][0]
    assert worker["gpu_memory"] == 5 * 2**30 and worker["rss"] > 0 and worker["state"] == "busy"


def test_a_sensor_the_board_lacks_is_none_not_an_error():
    sample = Telemetry(FakeNVML(worker_pid=0, power_fails=True)).sample([])
    assert sample["gpus"][0]["power_w"] is None and sample["gpus"][0]["temperature"] == 71


def test_a_worker_that_is_gone_reports_no_memory():
    sample = Telemetry(FakeNVML(worker_pid=0)).sample([WorkerView(2**22 + 12345, "demo", "idle")])
    assert sample["workers"][0]["rss"] is None


def test_no_nvml_means_cpu_and_ram_only():
    telemetry = Telemetry()  # this machine has no NVIDIA driver
    sample = telemetry.sample([])
    assert not telemetry.has_gpu and sample["gpus"] is None and "NVML" in sample["gpu_problem"]
    assert sample["ram_used"] > 0
