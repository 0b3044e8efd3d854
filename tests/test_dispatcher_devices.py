"""The Dispatcher's devices as given: numbered 0..N-1, and a model pinned to a smaller GPU judged
by that GPU's memory budget, at submit and in placement. No worker is started."""

import dataclasses

import pytest
from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER, load_registry
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.queue.devices import fake_devices
from diffdeck.engines.queue.dispatcher import Dispatcher
from helpers import write_models


def two_sizes():
    """A 100 GB GPU 0 and a 0.5 GB GPU 1 (budgets: 90 and 0.45 GB)."""
    large, small = fake_devices("2")
    return [dataclasses.replace(large, memory_bytes=100 * 10**9), dataclasses.replace(small, memory_bytes=5 * 10**8)]


def pinned_registry(folder, memory_gb):
    return load_registry(write_models(folder, {"small": {"source": str(DEMO_FOLDER), "gpus": [1], "memory_gb": memory_gb,
                                                         "defaults": dict(DEMO.defaults)}}))


async def test_a_model_pinned_to_a_smaller_gpu_is_placed_there_and_judged_by_its_budget(tmp_path):
    d = Dispatcher(pinned_registry(tmp_path, 1.0), tmp_path, devices=two_sizes())
    job = d.submit(JobSpec(prompt="weights past GPU 1's budget: it runs alone there", model="small"))
    (plan,) = d._plan()
    assert [(start.job, start.gpu) for start in plan.starts] == [(job.id, 1)]

    d = Dispatcher(pinned_registry(tmp_path, 0.1), tmp_path, devices=two_sizes())
    with pytest.raises(SpecError, match=r"^size: 1024x1024 needs about .* the memory budget is 0\.45 GB of "):
        d.submit(JobSpec(prompt="too large for GPU 1", model="small", width=1024, height=1024))


@pytest.mark.parametrize(("devices", "message"), [
    ([], "no device to render on"),
    (fake_devices("2")[1:], "numbered 0 to 0 in order, not 1"),
    (fake_devices("2")[::-1], "numbered 0 to 1 in order, not 1, 0"),
])
def test_devices_not_numbered_from_0_are_refused_in_one_sentence(registry, tmp_path, devices, message):
    with pytest.raises(ValueError, match=f"^devices: {message}"):
        Dispatcher(registry, tmp_path, devices=devices)
