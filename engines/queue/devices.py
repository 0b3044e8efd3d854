"""The devices the Dispatcher renders on, discovered once at start: the GPUs NVML reports (telemetry
already initialises it), else those torch sees in a probe process, in the order and of the set
`CUDA_VISIBLE_DEVICES` gives; none: the CPU alone. UI side: no torch here.

`DIFFDECK_FAKE_GPUS=N` (or `N:GB`, each device's memory) declares N devices in place of discovery,
for tests on machines without GPUs: workers are pinned to them all the same and run on the CPU.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffdeck.engines.core.registry import DeviceError
from diffdeck.engines.queue.environment_probe import probe_devices
from diffdeck.engines.queue.telemetry import nvml_text

FAKE_VARIABLE = "DIFFDECK_FAKE_GPUS"
_FAKE = re.compile(r"(\d+)(?::(\d+(?:\.\d+)?))?")
# Where one of these exists a GPU driver is installed: only then is a torch probe (seconds) worth it.
_DRIVER_FILES = ("/dev/nvidiactl", "/dev/kfd", "/proc/driver/nvidia")


@dataclass(frozen=True)
class Device:
    """One place a job renders. `index` is its position among the visible devices (what `gpus:`
    and `device: cuda:N` in models.yaml name); `visible` is what a worker pinned to it gets as
    CUDA_VISIBLE_DEVICES (None: the CPU, nothing to pin). `one_model`: it keeps one model warm at
    a time, whatever its budget (a Ray cluster's GPU: each warm model's actor holds a GPU). `lane`:
    not a device but one of a hosted model's lanes (a job at a time, sent to its provider), that
    model's name."""

    index: int
    name: str
    uuid: str | None = None
    memory_bytes: int | None = None
    visible: str | None = None
    fake: bool = False
    one_model: bool = False
    lane: str | None = None

    @property
    def is_gpu(self) -> bool:
        return self.visible is not None

    def record(self) -> dict[str, Any] | None:
        """What the record says of the GPU an image was rendered on; None for the CPU."""
        return {"index": self.index, "name": self.name, "uuid": self.uuid} if self.is_gpu else None

    def label(self) -> str:
        return f"GPU {self.index} ({self.name})" if self.is_gpu else "CPU"


CPU = Device(0, "cpu")


def discover(nvml: Any, environ: Mapping[str, str] = os.environ) -> list[Device]:
    """The devices of this machine, never empty: the fake ones, else the GPUs (NVML's, else a
    torch probe's), else the CPU."""
    fake = environ.get(FAKE_VARIABLE)
    if fake:
        return fake_devices(fake)
    gpus = nvml_devices(nvml, environ.get("CUDA_VISIBLE_DEVICES")) if nvml is not None else None
    if gpus is None and any(Path(path).exists() for path in _DRIVER_FILES):
        gpus = _probed(environ.get("CUDA_VISIBLE_DEVICES"))
    return gpus or [CPU]


def fake_devices(value: str) -> list[Device]:
    """`N` or `N:GB` as DIFFDECK_FAKE_GPUS declares them."""
    match = _FAKE.fullmatch(value.strip())
    if not match or int(match[1]) < 1:
        raise DeviceError(f"{FAKE_VARIABLE}={value!r}: expected a device count such as 2, or 2:24 (GB each)")
    memory = int(float(match[2]) * 1e9) if match[2] else None
    return [Device(i, f"fake GPU {i}", f"FAKE-GPU-{i}", memory, str(i), fake=True) for i in range(int(match[1]))]


def visible_entries(value: str | None, count: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: indices or UUIDs (GPU-..., MIG-...) in its order,
    up to the first entry that names nothing; unset: every device."""
    if value is None:
        return [str(i) for i in range(count)]
    entries = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry or (entry.isdigit() and int(entry) >= count) or entry.startswith("-"):
            break  # CUDA ignores this one and everything after it
        entries.append(entry)
    return entries


def nvml_devices(nvml: Any, visible: str | None) -> list[Device] | None:
    """The GPUs NVML reports that CUDA_VISIBLE_DEVICES lets a worker see; None when NVML fails."""
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        found = [(nvml_text(nvml.nvmlDeviceGetName(h)), nvml_text(nvml.nvmlDeviceGetUUID(h)),
                  nvml.nvmlDeviceGetMemoryInfo(h).total) for h in handles]
    except Exception:  # noqa: BLE001 - any NVML failure: ask torch instead
        return None
    return _visible(found, visible)


def _probed(visible: str | None) -> list[Device] | None:
    """The GPUs torch sees, asked of a probe process (which inherits CUDA_VISIBLE_DEVICES and so
    numbers them as a worker would); their UUIDs pin the workers."""
    found = probe_devices()
    if not found:
        return None
    return [Device(i, gpu["name"], gpu.get("uuid"), gpu.get("memory"), gpu.get("uuid") or str(i))
            for i, gpu in enumerate(found)]


def _visible(found: Sequence[tuple[str, str, int]], visible: str | None) -> list[Device]:
    devices = []
    for entry in visible_entries(visible, len(found)):
        matches = [gpu for i, gpu in enumerate(found) if entry == str(i) or gpu[1].startswith(entry)]
        if not entry.isdigit() and len(matches) != 1:
            break  # a UUID that names no GPU, or a prefix that names several: CUDA stops there too
        name, uuid, memory = matches[0]
        # Pinned by UUID: CUDA's own order (fastest first) may differ from NVML's (bus order).
        devices.append(Device(len(devices), name, uuid, memory, uuid))
    return devices

