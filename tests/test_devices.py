"""Device discovery: NVML (faked at the pynvml boundary: no GPU here), CUDA_VISIBLE_DEVICES, the
fake-device variable; and models pinned to GPUs in models.yaml."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from diffdeck.engines.core.registry import RegistryError, load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.queue.devices import CPU, DeviceError, discover, fake_devices
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.engines.record.session import Session
from diffdeck.engines.service.recorded_queue import RecordedQueue
from diffdeck.engines.service.replay import gpu_drift, judge
from diffdeck.engines.sets.similarity import Tolerance
from helpers import write_models
from PIL import Image

GPUS = [("NVIDIA A100", "GPU-aaaa-1111", 80 * 10**9), ("NVIDIA L4", "GPU-bbbb-2222", 24 * 10**9)]


class FakeNvml:
    """pynvml's calls that discovery makes, answering for the GPUs of GPUS (names as bytes, as
    older bindings give them)."""

    def __init__(self, gpus=GPUS, broken=False):
        self.gpus, self.broken = gpus, broken

    def nvmlDeviceGetCount(self):
        if self.broken:
            raise RuntimeError("NVML driver/library version mismatch")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetName(self, handle):
        return handle[0].encode()

    def nvmlDeviceGetUUID(self, handle):
        return handle[1]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=handle[2], used=0)


def names(devices):
    return [(d.index, d.name, d.visible) for d in devices]


def test_nvml_gpus_are_found_in_order_and_pinned_by_uuid():
    devices = discover(FakeNvml(), {})
    assert names(devices) == [(0, "NVIDIA A100", "GPU-aaaa-1111"), (1, "NVIDIA L4", "GPU-bbbb-2222")]
    assert devices[1].memory_bytes == 24 * 10**9 and devices[1].record() == {
        "index": 1, "name": "NVIDIA L4", "uuid": "GPU-bbbb-2222"}


@pytest.mark.parametrize(("visible", "expected"), [
    ("1", ["NVIDIA L4"]),
    ("1,0", ["NVIDIA L4", "NVIDIA A100"]),  # its order, as CUDA numbers them
    ("GPU-bbbb", ["NVIDIA L4"]),  # a UUID prefix
    ("GPU-bbbb-2222,0", ["NVIDIA L4", "NVIDIA A100"]),
    ("0,7,1", ["NVIDIA A100"]),  # CUDA stops at the first entry that names no GPU
    ("0,GPU-none,1", ["NVIDIA A100"]),
])
def test_cuda_visible_devices_chooses_and_orders_the_gpus(visible, expected):
    devices = discover(FakeNvml(), {"CUDA_VISIBLE_DEVICES": visible})
    assert [d.name for d in devices] == expected
    assert [d.index for d in devices] == list(range(len(expected)))  # what `gpus:` and cuda:N name


@pytest.mark.parametrize("visible", ["", "-1"])
def test_no_visible_gpu_leaves_the_cpu(visible):
    assert discover(FakeNvml(), {"CUDA_VISIBLE_DEVICES": visible}) == [CPU]


def test_without_nvml_or_with_it_failing_the_cpu_alone_renders():
    # No GPU driver on this machine: no torch probe either.
    assert discover(None, {}) == [CPU]
    assert discover(FakeNvml(broken=True), {}) == [CPU]
    assert not CPU.is_gpu and CPU.record() is None and CPU.visible is None


def test_fake_gpus_are_declared_by_the_variable_and_named_as_fakes():
    devices = discover(FakeNvml(), {"DIFFDECK_FAKE_GPUS": "3:24", "CUDA_VISIBLE_DEVICES": "0"})
    assert names(devices) == [(0, "fake GPU 0", "0"), (1, "fake GPU 1", "1"), (2, "fake GPU 2", "2")]
    assert all(d.fake and d.memory_bytes == 24 * 10**9 for d in devices)
    assert fake_devices("2")[1].memory_bytes is None
    for bad in ("two", "0", "2:", "-1"):
        with pytest.raises(DeviceError, match="DIFFDECK_FAKE_GPUS"):
            fake_devices(bad)


def test_dispatcher_budgets_each_gpu_by_its_own_memory(registry, tmp_path):
    d = Dispatcher(registry, tmp_path, devices=discover(FakeNvml(), {}))
    assert [slot.budget_gb for slot in d.devices] == [72.0, 21.6]
    assert d.memory_budget_gb == 72.0


def pinned_registry(tmp_path: Path, **entry):
    from diffdeck.engines.core.registry import DEMO_FOLDER

    return load_registry(write_models(tmp_path, {"pinned": {"source": str(DEMO_FOLDER), "memory_gb": 0.1, **entry}}))


def test_models_yaml_pins_gpus(tmp_path):
    assert pinned_registry(tmp_path, gpus=[0, 1]).get("pinned").gpus == (0, 1)
    assert pinned_registry(tmp_path, device="cuda:1").get("pinned").device == "cuda:1"
    for entry, message in (({"gpus": "0"}, "gpus must be a list"), ({"gpus": [-1]}, "gpus must be a list"),
                           ({"gpus": [0], "device": "cuda:1"}, "either gpus or device"),
                           ({"device": "cuda:x"}, "device 'cuda:x' is not one of")):
        with pytest.raises(RegistryError, match=message):
            pinned_registry(tmp_path, **entry)


def test_a_job_for_a_model_pinned_to_a_missing_gpu_is_refused(tmp_path):
    registry = pinned_registry(tmp_path, gpus=[3])
    with pytest.raises(RegistryError, match=r"'pinned' is pinned to GPU 3; this machine has GPUs 0, 1"):
        Dispatcher(registry, tmp_path, devices=fake_devices("2")).submit(JobSpec(prompt="x", model="pinned"))
    with pytest.raises(RegistryError, match="this machine has no GPU"):
        Dispatcher(registry, tmp_path, devices=[CPU]).submit(JobSpec(prompt="x", model="pinned"))


def test_replay_on_another_gpu_is_a_drift_factor(tmp_path):
    base = np.zeros((64, 64, 3), np.uint8) + 100
    nudged = base.copy()
    nudged[0, 0, 0] += 1  # last-bit noise: near-identical
    Image.fromarray(base).save(tmp_path / "recorded.png")
    Image.fromarray(nudged).save(tmp_path / "replayed.png")
    recorded = {"gpu": {"index": 0, "name": "NVIDIA L4", "uuid": "GPU-aaaa"}}
    elsewhere = {"gpu": {"index": 1, "name": "NVIDIA L4", "uuid": "GPU-bbbb"}}
    assert gpu_drift(recorded, elsewhere) == ["GPU: 0 NVIDIA L4 (GPU-aaaa) -> 1 NVIDIA L4 (GPU-bbbb)"]
    assert gpu_drift(recorded, recorded) == gpu_drift({}, elsewhere) == gpu_drift(recorded, None) == []
    verdict = judge(tmp_path / "recorded.png", None, str(tmp_path / "replayed.png"), Tolerance(), [])
    assert verdict.kind == "different"  # on the same GPU, nothing may move a pixel
    verdict = judge(tmp_path / "recorded.png", None, str(tmp_path / "replayed.png"), Tolerance(),
                    gpu_drift(recorded, elsewhere))
    assert verdict.kind == "near-identical"


async def test_the_engine_state_lists_each_device_with_its_workers_and_job(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFDECK_FAKE_GPUS", "2:24")
    engine = RecordedQueue(registry, Session.open(tmp_path / "session"))
    state = await engine.state()
    assert [(d["index"], d["name"], d["uuid"], d["fake"], d["budget_gb"], d["job"], d["workers"])
            for d in state["devices"]] == [(0, "fake GPU 0", "FAKE-GPU-0", True, 21.6, None, {}),
                                           (1, "fake GPU 1", "FAKE-GPU-1", True, 21.6, None, {})]
