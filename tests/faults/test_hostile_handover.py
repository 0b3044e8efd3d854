"""A resumed flow's hand-over files as its session records them, hostile or from an older
diffdeck: a stage image whose pixels changed is refused by the worker that reads it, and a stage
record without the latents a refine starts from fails the job in one sentence, before any model loads."""

import asyncio

import pytest
from diffdeck.engines.core.events import EventKind, JobRecord, Status
from diffdeck.engines.core.flows import Stage
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.queue.dispatcher import Dispatcher, Job, _inputs, legs
from diffdeck.engines.worker.stages import Handed
from helpers import write_models
from PIL import Image

REFINED = JobSpec(prompt="a red star", model="base", seed=7, stages=(
    Stage("txt2img", steps=2), Stage("refine", model="refiner", steps=2, switch=0.5)))


@pytest.fixture
def sdxl_registry(tmp_path, tiny_models):
    def entry():
        return {"source": str(tiny_models["sdxl"]), "memory_gb": 0.1, "defaults": {"steps": 2, "width": 64, "height": 64}}

    return load_registry(write_models(tmp_path, {"base": entry(), "refiner": entry()}))


def stage_record(path, **fields):
    return {"stage": 0, "kind": "txt2img", "model": "base", "image": 0, "seed": 7, "path": str(path),
            "timings": {}, "peak_memory": None, **fields}


def test_a_stage_image_whose_pixels_changed_is_refused(tmp_path):
    path = tmp_path / "stage.png"
    Image.new("RGB", (8, 8), "red").save(path)
    recorded = file_pixel_sha256(path)
    assert Handed.read({"image": str(path), "pixel_sha256": recorded}).image.size == (8, 8)
    Image.new("RGB", (8, 8), "blue").save(path)
    with pytest.raises(ValueError, match=r"^the stage image .*stage\.png is not the one recorded"):
        Handed.read({"image": str(path), "pixel_sha256": recorded})


async def test_the_next_leg_is_sent_the_recorded_pixels_and_a_record_without_latents_fails_the_job(
        sdxl_registry, tmp_path):
    async with Dispatcher(sdxl_registry, tmp_path) as d:
        events = d.subscribe()
        handed = stage_record(tmp_path / "stage.png", pixel_sha256="ab" * 32, latents=str(tmp_path / "l.safetensors"))
        refine = legs(d.resolve(REFINED))[1]
        assert _inputs(Job("job-0001", d.resolve(REFINED), stages=[handed]), refine, set()) == {"0": {
            "image": handed["path"], "pixel_sha256": "ab" * 32, "latents": handed["latents"]}}

        job = d.restore(JobRecord("job-0002", REFINED.to_dict(), stages=[stage_record(tmp_path / "stage.png")]))
        await asyncio.wait_for(d.wait(job.id), 30)
        assert job.status == Status.FAILED
        assert job.error == ("job-0002: the record of stage 0 lacks image 0's latents, which stage 1 starts from; "
                             "retry the job to render the flow from its start")
        assert not d.all_workers() and not any(e.type == EventKind.WORKER_SPAWNED for e in events.drain())
