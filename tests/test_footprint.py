"""Sizes a model cannot render are refused when the job is submitted, with one line that says why."""

import pytest
from diffdeck.engines.core.registry import DEMO_FOLDER
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.engines.queue.footprint import AREA_LIMIT, Budget, Footprint, check_size


async def test_a_size_past_the_memory_budget_is_refused_naming_size_estimate_and_budget(registry, tmp_path):
    d = Dispatcher(registry, tmp_path, memory_budget_gb=0.5)
    with pytest.raises(SpecError) as refused:
        d.submit(JobSpec(prompt="large", width=1024, height=1024))
    message = str(refused.value)
    assert message.startswith("size: 1024x1024 needs about ") and "budget is 0.50 GB of RAM" in message
    assert "\n" not in message
    fits = message.rsplit("try ", 1)[1].split()[0]
    width, height = map(int, fits.split("x"))
    assert d.submit(JobSpec(prompt="fits", width=width, height=height)).id == "job-0001", "nothing was used up"


async def test_far_past_its_native_size_is_refused_without_an_estimate(registry, tmp_path):
    d = Dispatcher(registry, tmp_path)
    with pytest.raises(SpecError, match=r"^size: 4096x4096 is 4,096 times the area model 'demo' is made for "
                                        r"\(64x64\); at most 256 times is rendered: try 1024x1024 or smaller$"):
        d.submit(JobSpec(prompt="huge", width=4096, height=4096))
    assert not d.jobs and not d.queue
    check_size(JobSpec(prompt="a hub model not downloaded", width=2048, height=2048), (512, 512), None, Budget(1, "GPU"))
    with pytest.raises(SpecError, match="at most 256 times"):
        check_size(JobSpec(prompt="x", width=4096, height=4096), (128, 128), None, Budget(1, "GPU"))


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_every_family_has_an_estimate_that_grows_with_the_size(tiny_models, family):
    footprint = Footprint.read(tiny_models[family], family, 0.1, 4)
    small, large = (footprint.activation_bytes(side, side) for side in (256, 1024))
    assert 0 < small and 15 * small <= large <= 17 * small, "activations grow with the area"


def test_the_demo_estimate_is_of_the_order_of_what_it_takes():
    """Measured here: the worker held 3.4 GB in the first step of 4096x4096, before the decode."""
    estimate = Footprint.read(DEMO_FOLDER, "sd", 0.1, 4).total_gb(4096, 4096)
    assert 3.4 < estimate < 4 * 3.4 and AREA_LIMIT * 64 * 64 < 4096 * 4096


def test_weights_past_the_budget_or_offloaded_are_not_refused_by_the_estimate(tmp_path):
    """A model larger than the budget renders offloaded (or by evicting others): the estimate of
    its activations must not refuse it at every size."""
    heavy = Footprint.read(DEMO_FOLDER, "sd", 20.0, 4)
    check_size(JobSpec(prompt="x", width=64, height=64), (64, 64), heavy, Budget(16, "GPU"))
