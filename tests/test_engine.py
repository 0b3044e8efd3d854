"""The Dispatcher with real worker subprocesses on real (tiny) diffusers pipelines."""

import asyncio
import base64
import io
import os
import signal
import time

import numpy as np
import pytest
from diffdeck.engines.core.events import EventKind, Status
from diffdeck.engines.core.registry import DEMO
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.worker_protocol import PREVIEW_MAX_BYTES, Intervals
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.engines.queue.worker_handles import EXITED
from diffdeck.engines.record.png_metadata import parse_parameters, read_record
from PIL import Image

pytestmark = pytest.mark.slow

TIMEOUT = 120
EVERY_STEP = Intervals(progress_s=0.0, preview_s=0.0)


@pytest.fixture
async def dispatcher(registry, tmp_path):
    async with Dispatcher(registry, tmp_path / "images", intervals=EVERY_STEP) as d:
        yield d


async def until(stream, predicate, timeout=TIMEOUT):
    """Events from `stream` up to and including the first that satisfies `predicate`."""
    seen = []

    async def collect():
        async for event in stream:
            seen.append(event)
            if predicate(event):
                return seen

    return await asyncio.wait_for(collect(), timeout)


async def render(dispatcher, **spec):
    job = dispatcher.submit(JobSpec(**{"prompt": "a red circle", "seed": 42, **spec}))
    await asyncio.wait_for(dispatcher.wait(job.id), TIMEOUT)
    return job


def pixels(path):
    return np.asarray(Image.open(path))


async def test_render_writes_png_whose_metadata_round_trips(dispatcher):
    job = await render(dispatcher, negative_prompt="blurry", count=2, seed=1000)
    assert job.status == Status.DONE, job.error
    assert [img["seed"] for img in job.images] == [1000, 1001]
    path = job.images[1]["path"]
    record = read_record(path)
    assert record["seed"] == 1001 and record["image"] == 1 and record["rng"] == "cpu"
    assert record["spec"]["prompt"] == "a red circle" and record["spec"]["seeds"] == [1000, 1001]
    assert record["model"]["family"] == "sd" and record["model"]["pipeline_class"] == "StableDiffusionPipeline"
    params = parse_parameters(Image.open(path).text["parameters"])
    assert params["Prompt"] == "a red circle" and params["Negative prompt"] == "blurry"
    assert params["Seed"] == "1001" and params["Size"] == "64x64" and params["Steps"] == str(DEMO.defaults["steps"])
    assert Image.open(path).size == (64, 64)
    assert set(job.timings) >= {"queue_wait_s", "load_s", "denoise_s", "decode_s", "save_s", "total_s"}
    assert job.timings["load_s"] > 0 and job.peak_memory > 0


async def test_same_seed_gives_identical_pixels_and_image_i_renders_alone(dispatcher):
    a = await render(dispatcher, count=3, seed=7)
    b = await render(dispatcher, seed=9)  # image 2 of `a`, alone
    c = await render(dispatcher, count=3, seed=7)
    assert np.array_equal(pixels(a.images[2]["path"]), pixels(b.images[0]["path"]))
    for x, y in zip(a.images, c.images):
        assert np.array_equal(pixels(x["path"]), pixels(y["path"]))
    assert not np.array_equal(pixels(a.images[0]["path"]), pixels(a.images[1]["path"]))
    assert b.timings["load_s"] == 0, "the second job reuses the warm worker"


async def test_two_models_run_in_two_worker_processes(dispatcher):
    a = await render(dispatcher, model="demo")
    pid_a = dispatcher.workers["demo"].pid
    b = await render(dispatcher, model="demo2")
    assert a.status == b.status == Status.DONE
    assert set(dispatcher.workers) == {"demo", "demo2"}
    assert pid_a != dispatcher.workers["demo2"].pid and pid_a != os.getpid()


async def test_cancel_lands_within_one_step_and_skips_the_decode(dispatcher, tmp_path):
    events = dispatcher.subscribe()
    job = dispatcher.submit(JobSpec(prompt="slow", seed=1, steps=400, width=256, height=256))
    seen = await until(events, lambda e: e.type == "step" and e.data["step"] >= 3)
    dispatcher.cancel(job.id)
    last_seen = seen[-1].data["step"]
    rest = await until(events, lambda e: e.type == EventKind.CANCELLED)
    assert job.status == Status.CANCELLED
    steps_after = [e.data["step"] for e in rest if e.type == "step"]
    assert rest[-1].data["step"] <= last_seen + 2, (last_seen, steps_after)
    assert not any(e.type == "image" for e in rest)
    assert not list((tmp_path / "images").glob("*.png"))
    assert (await render(dispatcher)).status == Status.DONE


async def test_killed_worker_fails_its_job_clearly_and_the_queue_goes_on(dispatcher):
    events = dispatcher.subscribe()
    doomed = dispatcher.submit(JobSpec(prompt="doomed", seed=1, steps=400, width=256, height=256))
    after = dispatcher.submit(JobSpec(prompt="after", seed=2))
    await until(events, lambda e: e.type == "step")
    os.kill(dispatcher.workers["demo"].pid, signal.SIGKILL)
    rest = await until(events, lambda e: e.type == EventKind.DONE and e.job == after.id)
    failed = [e for e in rest if e.type == EventKind.FAILED]
    assert [e.job for e in failed] == [doomed.id] and failed[0].data["kind"] == "crash"
    assert failed[0].data["error"] == doomed.error
    assert doomed.status == Status.FAILED
    assert "SIGKILL" in doomed.error and "'demo'" in doomed.error and doomed.error_kind == "crash"
    assert after.status == Status.DONE, after.error


async def test_job_that_kills_its_worker_twice_is_held(dispatcher):
    events = dispatcher.subscribe()
    job = dispatcher.submit(JobSpec(prompt="crashy", seed=1, steps=400, width=256, height=256))
    for attempt in range(2):
        await until(events, lambda e: e.type == "step" and e.job == job.id)
        os.kill(dispatcher.workers["demo"].pid, signal.SIGKILL)
        await asyncio.wait_for(dispatcher.wait(job.id), TIMEOUT)
        if attempt == 0:
            assert job.status == Status.FAILED
            dispatcher.retry(job.id)
    assert job.status == Status.HELD and job.worker_crashes == 2
    with pytest.raises(ValueError, match="held"):
        dispatcher.retry(job.id)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
async def test_every_family_renders_through_the_same_worker_path(dispatcher, family):
    events = dispatcher.subscribe()
    job = await render(dispatcher, model=f"tiny-{family}", count=2)
    assert job.status == Status.DONE, job.error
    record = read_record(job.images[0]["path"])
    assert record["model"]["family"] == family
    assert Image.open(job.images[0]["path"]).size == (64, 64)
    previews = [e for e in events.drain() if e.type == "preview"]
    assert previews, "previews are produced for every family"
    data = base64.b64decode(previews[-1].data["data"])
    assert len(data) <= PREVIEW_MAX_BYTES
    assert Image.open(io.BytesIO(data)).mode == "RGB"


async def test_scheduler_swap_is_recorded(dispatcher):
    job = await render(dispatcher, scheduler="dpmpp_2m_karras")
    record = read_record(job.images[0]["path"])
    assert record["model"]["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    assert record["model"]["scheduler"]["config"]["use_karras_sigmas"] is True
    assert "Schedule type: Karras" in Image.open(job.images[0]["path"]).text["parameters"]
    default = await render(dispatcher)
    assert read_record(default.images[0]["path"])["model"]["scheduler"]["class"] == "EulerDiscreteScheduler"


async def test_warm_model_goes_first_within_the_look_ahead(registry, tmp_path):
    async with Dispatcher(registry, tmp_path, lookahead=1) as d:
        await render(d, model="demo")  # demo is warm now
        d.pause()
        jobs = [d.submit(JobSpec(prompt="p", model=m, seed=1)) for m in ("demo2", "demo", "demo")]
        events = d.subscribe()
        d.resume()
        for job in jobs:
            await asyncio.wait_for(d.wait(job.id), TIMEOUT)
        started = [e.job for e in events.drain() if e.type == "started"]
    # demo2 is passed over once for the warm demo, then its look-ahead allowance is spent
    assert started == [jobs[1].id, jobs[0].id, jobs[2].id]


async def test_pause_move_resume(dispatcher):
    dispatcher.pause()
    jobs = [dispatcher.submit(JobSpec(prompt=f"p{i}", seed=i)) for i in range(3)]
    await asyncio.sleep(0.5)
    assert all(j.status == "queued" for j in jobs)
    dispatcher.move(jobs[2].id, 0)
    assert [j.id for j in dispatcher.queue] == [jobs[2].id, jobs[0].id, jobs[1].id]
    dispatcher.cancel(jobs[0].id)
    events = dispatcher.subscribe()
    dispatcher.resume()
    await asyncio.wait_for(dispatcher.wait(jobs[1].id), TIMEOUT)
    started = [e.job for e in events.drain() if e.type == "started"]
    assert started == [jobs[2].id, jobs[1].id]
    assert jobs[0].status == Status.CANCELLED and not jobs[0].images


async def test_memory_budget_evicts_the_least_recently_used_idle_worker(registry, tmp_path):
    async with Dispatcher(registry, tmp_path, memory_budget_gb=0.15) as d:
        events = d.subscribe()
        await render(d, model="demo")
        first = d.workers["demo"]
        await render(d, model="demo2")
        assert first.state == EXITED and set(d.workers) == {"demo2"}
        evicted = [e for e in events.drain() if e.type == "worker_evicted"]
        assert evicted[0].data["model"] == "demo" and evicted[0].data["reason"] == "memory budget"


async def test_idle_worker_is_stopped_after_its_timeout(registry, tmp_path):
    async with Dispatcher(registry, tmp_path, idle_timeout_s=0.3, telemetry_interval_s=0.1) as d:
        events = d.subscribe()
        await render(d)
        await until(events, lambda e: e.type == "worker_exited")
        assert d.workers == {}
        assert (await render(d)).status == Status.DONE, "a new worker is started on demand"


async def test_telemetry_without_a_gpu_says_so_and_reports_workers(registry, tmp_path):
    async with Dispatcher(registry, tmp_path, telemetry_interval_s=0.1) as d:
        events = d.subscribe()
        await render(d)
        sample = (await until(events, lambda e: e.type == "telemetry" and e.data["workers"]
                                        and e.data["workers"][0]["state"] == "idle"))[-1].data
    assert sample["gpus"] is None and sample["gpu_problem"]
    assert sample["ram_total"] > 0 and 0 <= sample["cpu_percent"] <= 100 * os.cpu_count()
    worker = sample["workers"][0]
    assert worker["model"] == "demo" and worker["rss"] > 50e6 and worker["state"] == "idle"


async def test_a_model_that_fails_to_load_fails_its_job_and_the_queue_goes_on(registry, tmp_path):
    broken = tmp_path / "broken"
    (broken / "unet").mkdir(parents=True)
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": '
                                             '["diffusers", "UNet2DConditionModel"]}')
    registry.models["broken"] = registry.models["demo2"].__class__(name="broken", source=str(broken))
    async with Dispatcher(registry, tmp_path) as d:
        bad = d.submit(JobSpec(prompt="x", model="broken"))
        good = d.submit(JobSpec(prompt="x"))
        await asyncio.wait_for(d.wait(good.id), TIMEOUT)
    assert bad.status == Status.FAILED and bad.error_kind == "load"
    assert "could not load model 'broken'" in bad.error
    assert good.status == Status.DONE


async def test_cancel_during_the_model_load_stops_that_worker(registry, tmp_path):
    async with Dispatcher(registry, tmp_path) as d:
        events = d.subscribe()
        job = d.submit(JobSpec(prompt="never", model="demo2"))
        await until(events, lambda e: e.type == "loading")
        assert d.cancel(job.id) and job.status == Status.CANCELLED
        evicted = await until(events, lambda e: e.type == "worker_evicted")
        assert evicted[-1].data["reason"] == "cancelled while loading"
        assert (await render(d)).status == Status.DONE
        assert set(d.workers) == {"demo"}


async def test_close_while_a_job_runs_cancels_it_without_blaming_it(registry, tmp_path):
    d = Dispatcher(registry, tmp_path)
    d.start()
    events = d.subscribe()
    job = d.submit(JobSpec(prompt="slow", seed=1, steps=1000, width=256, height=256))
    await until(events, lambda e: e.type == "step")
    worker = d.workers["demo"]
    await asyncio.wait_for(d.close(), 30)
    assert job.status == Status.CANCELLED and job.worker_crashes == 0
    assert worker.state == EXITED and worker.returncode == 0


async def test_progress_is_throttled_but_every_image_reports_its_last_step(registry, tmp_path):
    async with Dispatcher(registry, tmp_path, intervals=Intervals(progress_s=10.0, preview_s=10.0)) as d:
        events = d.subscribe()
        job = await render(d, count=2, steps=12)
        steps = [(e.data["image"], e.data["step"]) for e in events.drain() if e.type == "step" and e.job == job.id]
    assert steps == [(0, 1), (0, 12), (1, 12)]


async def test_cancel_lands_inside_a_step_not_at_its_end(dispatcher):
    """512x512 on the demo takes about a second a step here: a cancel sent as step 2 begins
    stops it at the next module the UNet enters, well before the step would end."""
    events = dispatcher.subscribe()
    job = dispatcher.submit(JobSpec(prompt="slow", seed=1, steps=100, width=512, height=512))
    (*_, first) = await until(events, lambda e: e.type == "step" and e.job == job.id)
    sent = time.monotonic()
    dispatcher.cancel(job.id)
    rest = await until(events, lambda e: e.type == EventKind.CANCELLED)
    latency, step_s = time.monotonic() - sent, first.data["elapsed_s"]
    assert [e.data["step"] for e in rest if e.type == "step"] == [], "step 2 never ended"
    assert rest[-1].data["step"] == 1
    assert latency < 0.5 * step_s, f"the cancel took {latency:.2f} s in a step of {step_s:.2f} s"
