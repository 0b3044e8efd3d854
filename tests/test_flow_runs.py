"""Flows run by the Dispatcher in legs (the stages in a row of one model, one job message to its
worker), recorded in a session: stage images with their timings and peak memory, images handed
from one model's worker to another's through the session folder (and latents, for a refine),
a flow stopped between its legs resumed at the leg it had not run, a LoRA changed since submit
refused by the worker. Real workers on the demo model, a copy of it, and a tiny SDXL pipeline."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from diffdeck.engines.core.events import FINISHING_EVENTS, Event, EventKind, Status
from diffdeck.engines.core.flows import Lora, Stage
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER, load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.queue.dispatcher import Dispatcher, Leg, legs
from diffdeck.engines.record.png_metadata import read_record
from diffdeck.engines.record.session import Session
from diffdeck.engines.service.recorded_queue import RecordedQueue
from helpers import write_models
from PIL import Image

TIMEOUT = 180
QUIET = Intervals(progress_s=1.0, preview_s=1000.0)
PROMPT = "a large red circle on a blue background"
# txt2img on the demo, then a 2x Lanczos upscale with an img2img pass on a copy of it (another
# model, so another worker): the image crosses over as a PNG in the session's images folder.
TWO_MODELS = (Stage("txt2img", steps=8), Stage("upscale", model="demo2", factor=2, strength=0.5, steps=4))


@pytest.fixture(scope="module")
def flow_registry(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("flow-models")
    shutil.copytree(DEMO_FOLDER, root / "demo-copy")
    def sdxl():
        return {"source": str(tiny_models["sdxl"]), "memory_gb": 0.1, "defaults": {"steps": 6, "width": 64, "height": 64}}

    return load_registry(write_models(root, {
        "demo2": {"source": str(root / "demo-copy"), "memory_gb": 0.1, "defaults": dict(DEMO.defaults)},
        "base": sdxl(), "refiner": sdxl()}))


def two_model_job(**fields) -> JobSpec:
    return JobSpec(**{"prompt": PROMPT, "model": "demo", "seed": 3, "count": 2, "stages": TWO_MODELS, **fields})


async def record_session(registry, folder: Path, specs: list[JobSpec], stop: Callable[[Event], bool] | None = None,
                         resume: bool = False) -> tuple[list[Event], dict]:
    """Run `specs` (and with `resume`, the session's unfinished jobs) in a recorded queue until
    every job has ended, or until `stop` says so; then shut it down as the workbench does. The
    events, and the engine's state (as the daemon sends it) just before the shut-down."""
    session = Session.open_for_writing(folder, "test")
    queue = RecordedQueue(registry, session, intervals=QUIET)
    events = queue.dispatcher.subscribe()
    restored = queue.start(resume=resume)
    assert restored == []
    ids = [job.id for job in queue.dispatcher.jobs.values()] + [(await queue.submit(spec)).id for spec in specs]
    stop = stop or (lambda event: False)
    seen, ended = [], set()

    async def follow():
        async for event in events:
            seen.append(event)
            if event.type in FINISHING_EVENTS:
                ended.add(event.job)
            if stop(event) or ended >= set(ids):
                return

    try:
        await asyncio.wait_for(follow(), TIMEOUT)
        state = await queue.state()
    finally:
        assert await queue.shut_down() is None
        session.close()
    return seen, state


def of(events: list[Event], kind: EventKind) -> list[Event]:
    return [e for e in events if e.type == kind]


@pytest.fixture(scope="module")
def two_model_run(flow_registry, tmp_path_factory):
    """The two-model flow, rendered whole once in a session: (its folder, events, state)."""
    folder = tmp_path_factory.mktemp("flow-session")
    events, state = asyncio.run(record_session(flow_registry, folder, [two_model_job()]))
    return folder, events, state


def test_a_flow_is_cut_into_legs_where_the_model_changes():
    stages = (Stage("txt2img", model="a"), Stage("img2img", model="a", strength=0.5),
              Stage("refine", model="b", switch=0.8), Stage("upscale", model="a", factor=2, strength=0.3))
    assert legs(JobSpec(prompt="p", model="a", stages=stages)) == [Leg("a", 0, 1), Leg("b", 2, 2), Leg("a", 3, 3)]
    assert legs(JobSpec(prompt="p", model="a")) == []


@pytest.mark.slow
def test_two_models_hand_the_image_over_through_the_session_folder(two_model_run):
    folder, events, state = two_model_run
    session = Session.open(folder, create=False)
    (job_id, job), = session.jobs.items()
    assert job["status"] == Status.DONE, job.get("error")
    assert [e.data["model"] for e in of(events, EventKind.WORKER_READY)] == ["demo", "demo2"]
    assert len(of(events, EventKind.STARTED)) == 1, "one job, started once, whatever its legs"

    stages = sorted(job["stages"], key=lambda s: s["image"])
    assert [(s["stage"], s["kind"], s["model"], s["image"], s["seed"]) for s in stages] == [
        (0, "txt2img", "demo", 0, 3), (0, "txt2img", "demo", 1, 4)]
    for stage, image in zip(stages, sorted(job["images"], key=lambda i: i["image"])):
        assert not Path(stage["path"]).is_absolute() and session.resolve(stage["path"]).parent == session.images_dir
        assert file_pixel_sha256(session.resolve(stage["path"])) == stage["pixel_sha256"]
        assert {"denoise_s", "decode_s", "save_s", "total_s"} <= set(stage["timings"]) and stage["peak_memory"] > 0
        assert Image.open(session.resolve(stage["path"])).size == (64, 64)
        assert Image.open(session.resolve(image["path"])).size == (128, 128)
        assert stage["timings"]["total_s"] < image["timings"]["total_s"], "the stage image came first"
        assert read_record(session.resolve(image["path"]))["model"]["name"] == "demo2"
    made = stages + job["images"]
    assert job["timings"]["denoise_s"] == pytest.approx(sum(m["timings"]["denoise_s"] for m in made), abs=0.01), \
        "the job's time adds up the legs'"
    assert job["timings"]["load_s"] > 0 and job["peak_memory"] == max(m["peak_memory"] for m in made)
    (shown,) = state["jobs"]
    assert (shown["id"], len(shown["stages"]), shown["status"]) == (job_id, 2, Status.DONE), "the daemon's state"


@pytest.mark.slow
async def test_a_flow_of_one_model_runs_in_one_leg_of_its_worker(flow_registry, tmp_path):
    async with Dispatcher(flow_registry, tmp_path / "images", intervals=QUIET) as dispatcher:
        events = dispatcher.subscribe()
        job = dispatcher.submit(JobSpec(prompt=PROMPT, flow="demo-final", seed=5))
        plain = dispatcher.submit(JobSpec(prompt=PROMPT, model="demo", steps=20, seed=5))
        await asyncio.wait_for(dispatcher.wait(plain.id), TIMEOUT)
    assert job.status == Status.DONE, job.error
    assert legs(job.spec) == [Leg("demo", 0, 1)]
    assert [e.data["model"] for e in events.drain() if e.type == EventKind.WORKER_SPAWNED] == ["demo"]
    (stage,) = job.stages
    assert (stage["stage"], stage["kind"], "latents" in stage) == (0, "txt2img", False)
    assert stage["pixel_sha256"] == plain.images[0]["pixel_sha256"], "its first stage is the plain render"
    assert Image.open(job.images[0]["path"]).size == (128, 128)


@pytest.mark.slow
async def test_a_refine_on_another_model_gets_the_latents_through_the_session_folder(flow_registry, tmp_path):
    def refined_by(model: str) -> JobSpec:
        return JobSpec(prompt=PROMPT, model="base", seed=7, stages=(
            Stage("txt2img", steps=6), Stage("refine", model=model, steps=6, switch=0.5)))

    async with Dispatcher(flow_registry, tmp_path / "images", intervals=QUIET) as dispatcher:
        across, alone = dispatcher.submit(refined_by("refiner")), dispatcher.submit(refined_by("base"))
        await asyncio.wait_for(dispatcher.wait(alone.id), TIMEOUT)
    assert across.status == alone.status == Status.DONE, across.error or alone.error
    (handed,) = across.stages
    assert Path(handed["latents"]).parent == tmp_path / "images" and "latents" not in alone.stages[0]
    assert across.images[0]["pixel_sha256"] == alone.images[0]["pixel_sha256"], \
        "latents handed through a file refine as they do in one worker"


@pytest.mark.slow
def test_a_flow_stopped_between_its_legs_resumes_at_the_leg_it_had_not_run(flow_registry, two_model_run, tmp_path):
    folder = tmp_path / "session"
    handed = set()

    def leg_one_done(event: Event) -> bool:
        if event.type == EventKind.STAGE_IMAGE:
            handed.add(event.data["image"])
        return handed == {0, 1}

    asyncio.run(record_session(flow_registry, folder, [two_model_job()], stop=leg_one_done))
    (job,) = Session.open(folder, create=False).jobs.values()
    assert (job["status"], job["images"], len(job["stages"])) == (Status.QUEUED, [], 2)

    events, _ = asyncio.run(record_session(flow_registry, folder, [], resume=True))
    assert [e.data["model"] for e in of(events, EventKind.WORKER_SPAWNED)] == ["demo2"], "the first leg is not run again"
    (job,) = Session.open(folder, create=False).jobs.values()
    (reference,) = Session.open(two_model_run[0], create=False).jobs.values()
    assert job["status"] == Status.DONE and job.get("worker_crashes", 0) == 0
    assert sorted(i["pixel_sha256"] for i in job["images"]) == sorted(i["pixel_sha256"] for i in reference["images"])
    made = job["stages"] + job["images"]
    for key in ("prepare_s", "denoise_s", "decode_s", "save_s"):
        assert job["timings"][key] == pytest.approx(sum(m["timings"][key] for m in made), abs=0.01), \
            f"{key}: the job's time adds up every stage, those before the resume too"


@pytest.mark.slow
async def test_a_lora_file_changed_after_submit_fails_its_job_with_the_reason(flow_registry, tmp_path):
    import tinypipes

    lora = tinypipes.save_lora(Path(DEMO.source) / "unet", tmp_path / "spots.safetensors")
    async with Dispatcher(flow_registry, tmp_path / "images", intervals=QUIET) as dispatcher:
        dispatcher.pause()
        job = dispatcher.submit(JobSpec(prompt=PROMPT, model="demo", seed=1, steps=4, loras=(Lora(str(lora)),)))
        assert job.spec.loras[0].sha256, "hashed at submit"
        tinypipes.save_lora(Path(DEMO.source) / "unet", lora, seed=1)  # retrained while the job waits
        dispatcher.resume()
        await asyncio.wait_for(dispatcher.wait(job.id), TIMEOUT)
    assert job.status == Status.FAILED and job.images == []
    assert f"LoRA {lora} has changed since the job was submitted" in job.error
