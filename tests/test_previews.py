import asyncio
import base64
import io
import json
import logging
import time

import numpy as np
import pytest
from diffdeck.engines.core.events import Status
from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER, load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.worker_protocol import PREVIEW_MAX_BYTES, Intervals
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.engines.worker.main import Commands, Wire, Worker
from diffdeck.engines.worker.previews import FACTORS, LATENT_RGB_FILE, encode_preview, latents_to_rgb, preview_factors
from helpers import write_models
from PIL import Image


@pytest.mark.parametrize(("family", "channels"), [("sd", 4), ("sdxl", 4), ("sd3", 16), ("flux", 16)])
def test_latents_map_to_an_rgb_image(family, channels):
    latents = np.random.default_rng(0).normal(size=(channels, 16, 24)).astype(np.float32)
    rgb = latents_to_rgb(latents, FACTORS[family])
    assert rgb.shape == (16, 24, 3) and rgb.dtype == np.uint8
    assert FACTORS[family][0].shape == (channels, 3)


def test_the_linear_map_is_the_published_one():
    latents = np.zeros((4, 1, 1), np.float32)
    latents[3] = 1.0  # SD's fourth channel is mostly anti-blue
    r, g, b = latents_to_rgb(latents, FACTORS["sd"])[0, 0]
    assert b < r < 127 and b < g < 127
    assert tuple(latents_to_rgb(np.zeros((4, 2, 2), np.float32), FACTORS["sdxl"])[0, 0]) == (141, 125, 127)


def test_wrong_channel_count_is_named():
    with pytest.raises(ValueError, match="16 latent channels, got 4"):
        latents_to_rgb(np.zeros((4, 8, 8), np.float32), FACTORS["flux"])


def test_a_model_with_its_own_latents_brings_its_own_map(tmp_path):
    assert preview_factors("sd", tmp_path) is FACTORS["sd"]
    (tmp_path / LATENT_RGB_FILE).write_text('{"factors": [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], "bias": [0, 0, -1]}')
    latents = np.zeros((4, 1, 1), np.float32)
    latents[0] = 1.0
    assert tuple(latents_to_rgb(latents, preview_factors("sd", tmp_path))[0, 0]) == (255, 127, 0)


def test_previews_fit_one_protocol_message():
    noise = np.random.default_rng(1).integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    mime, data = encode_preview(noise)
    assert mime == "image/jpeg" and len(data) <= PREVIEW_MAX_BYTES
    assert max(Image.open(io.BytesIO(data)).size) <= 128


@pytest.mark.parametrize("channels", [1, 2, 4, 7])
def test_latents_no_published_map_fits_get_a_generic_one(channels, tmp_path):
    """A fine-tune or a small model whose VAE is not its family's usual: previews still come."""
    factors = preview_factors("flux", tmp_path, channels)
    latents = np.random.default_rng(2).normal(size=(channels, 8, 8)).astype(np.float32)
    rgb = latents_to_rgb(latents, factors)
    assert rgb.shape == (8, 8, 3) and len(np.unique(rgb)) > 1
    assert preview_factors("sd3", tmp_path, 16) is FACTORS["sd3"], "the published map where it fits"


@pytest.mark.slow
@pytest.mark.parametrize(("family", "channels"), [("sd3", 4), ("flux", 1)])
async def test_previews_on_every_step_never_fail_a_job_whatever_its_latent_channels(family, channels, tmp_path):
    import tinypipes

    folder = tinypipes.save(family, tmp_path / f"odd-{family}", latent_channels=channels)
    registry = load_registry(write_models(tmp_path, {"odd": {
        "source": str(folder), "memory_gb": 0.1, "defaults": {"steps": 3, "width": 64, "height": 64}}}))
    async with Dispatcher(registry, tmp_path / "images", intervals=Intervals(progress_s=0.0, preview_s=0.0)) as d:
        events = d.subscribe()
        job = d.submit(JobSpec(prompt="a red circle", model="odd", seed=1))
        await asyncio.wait_for(d.wait(job.id), 120)
        previews = [e for e in events.drain() if e.type == "preview"]
    assert job.status == Status.DONE, job.error
    assert [e.data["step"] for e in previews] == [2, 3], "every step that has a step before it"
    assert Image.open(io.BytesIO(base64.b64decode(previews[0].data["data"]))).size == (8, 8)


class PreviewFails:
    """A model whose every preview raises, as an unforeseen latent layout would."""

    spec, folder, family, pipeline_class, dtype_name, device = DEMO, DEMO_FOLDER, "sd", "X", "float32", "cpu"

    def scheduler_record(self):
        return {"class": "EulerDiscreteScheduler", "config": {}}

    def use_scheduler(self, name):
        pass

    def render(self, spec, index, hooks):
        for step in (1, 2, 3):
            hooks.on_preview(index, step, lambda: latents_to_rgb(np.zeros((3, 4, 4), np.float32), FACTORS["sd"]))
        return Image.new("RGB", (8, 8)), {"denoise_s": 0.0, "decode_s": 0.0}, 0

    def end_job(self):
        pass


def test_a_preview_that_fails_stops_previews_for_the_job_and_the_job_goes_on(tmp_path, caplog):
    spec = JobSpec(prompt="p", seeds=(1, 2), seed=1, count=2, steps=3, width=8, height=8, guidance=1.0)
    commands = Commands(io.BytesIO(json.dumps({"type": "job", "id": "j1", "spec": spec.to_dict(),
                                               "out_dir": str(tmp_path)}).encode() + b"\n"))
    deadline = time.monotonic() + 10
    while commands.jobs.qsize() < 2:  # the job, and the end of input
        assert time.monotonic() < deadline, "the worker's reader never took the job"
        time.sleep(0.001)
    commands.cancelled.clear()  # the input ended before the job ran: keep it running regardless
    worker = Worker(PreviewFails(), Wire(out := io.BytesIO()), commands, Intervals())
    with caplog.at_level(logging.ERROR, "diffdeck.worker"):
        assert worker.serve() == 0
    sent = [json.loads(line)["type"] for line in out.getvalue().splitlines()]
    assert sent == ["image", "image", "done"]
    assert [r.getMessage() for r in caplog.records] == ["j1: previews stopped for this job"], "logged once"
