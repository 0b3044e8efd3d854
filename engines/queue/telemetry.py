"""GPU, CPU and per-worker memory sampling. UI side: NVML (optional) and psutil, no torch.

Without NVML or without a GPU, `gpus` is None and the sample says so; CPU and RAM are
always there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import psutil


@dataclass(frozen=True)
class WorkerView:
    pid: int
    model: str
    state: str


class Telemetry:
    def __init__(self, nvml: Any = None):
        """`nvml` is the pynvml module; None: import and initialise it if it can be."""
        self._nvml = nvml if nvml is not None else _init_nvml()
        self._handles = []
        self.gpu_problem: str | None = None
        if self._nvml is None:
            self.gpu_problem = "NVML is not available (no NVIDIA driver, or nvidia-ml-py missing)"
        else:
            try:
                count = self._nvml.nvmlDeviceGetCount()
                self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            except Exception as e:  # noqa: BLE001 - any NVML failure means: no GPU data
                self.gpu_problem = f"NVML failed: {e}"
            if not self._handles and self.gpu_problem is None:
                self.gpu_problem = "no GPU found"
        self._processes: dict[int, psutil.Process] = {}
        psutil.cpu_percent()  # the first call only starts the measurement

    @property
    def nvml(self) -> Any:
        """The initialised pynvml module, or None."""
        return self._nvml

    @property
    def has_gpu(self) -> bool:
        return bool(self._handles)

    def sample(self, workers: Iterable[WorkerView]) -> dict[str, Any]:
        ram = psutil.virtual_memory()
        gpus, gpu_by_pid = self._sample_gpus()
        return {
            "gpus": gpus,
            "gpu_problem": self.gpu_problem,
            "cpu_percent": psutil.cpu_percent(),
            "ram_used": ram.total - ram.available,
            "ram_total": ram.total,
            "workers": [self._sample_worker(w, gpu_by_pid.get(w.pid)) for w in workers],
        }

    def _sample_worker(self, worker: WorkerView, gpu_memory: int | None) -> dict[str, Any]:
        row = {"pid": worker.pid, "model": worker.model, "state": worker.state,
               "rss": None, "cpu_percent": None, "gpu_memory": gpu_memory}
        try:
            proc = self._processes.get(worker.pid)
            if proc is None:
                proc = self._processes[worker.pid] = psutil.Process(worker.pid)
                proc.cpu_percent()
            row["rss"] = proc.memory_info().rss
            row["cpu_percent"] = proc.cpu_percent()
        except psutil.Error:
            self._processes.pop(worker.pid, None)
        return row

    def _sample_gpus(self) -> tuple[list[dict[str, Any]] | None, dict[int, int]]:
        if not self._handles:
            return None, {}
        nvml, gpus, by_pid = self._nvml, [], {}
        for index, handle in enumerate(self._handles):
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpu = {"index": index, "name": nvml_text(nvml.nvmlDeviceGetName(handle)), "uuid": None,
                   "memory_used": memory.used, "memory_total": memory.total,
                   "utilization": None, "temperature": None, "power_w": None}
            for key, read in (
                ("uuid", lambda handle=handle: nvml_text(nvml.nvmlDeviceGetUUID(handle))),  # NVML's order is not CUDA's
                ("utilization", lambda handle=handle: nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                ("temperature", lambda handle=handle: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
                ("power_w", lambda handle=handle: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
            ):
                try:
                    gpu[key] = read()
                except nvml.NVMLError:
                    pass  # not every board reports every sensor
            try:
                for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    by_pid[proc.pid] = by_pid.get(proc.pid, 0) + (proc.usedGpuMemory or 0)
            except nvml.NVMLError:
                pass
            gpus.append(gpu)
        return gpus, by_pid


def _init_nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - no library, no driver, no GPU: all the same here
        return None


def nvml_text(value: Any) -> str:
    """NVML answers bytes in older versions of its bindings, str in newer."""
    return value.decode() if isinstance(value, bytes) else str(value)
