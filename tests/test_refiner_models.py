"""Image-to-image models (an SDXL refiner, as stabilityai/stable-diffusion-xl-refiner-1.0 is: a
StableDiffusionXLImg2ImgPipeline folder with the second text encoder only and an aesthetic score;
an SD img2img folder) in the registry, refused where a flow would start on them, and run by their
worker in the stages that start from an image or latents; and LoRAs from the hub cache, loaded by
the worker from the very file hashed at submit. Through the real Dispatcher and workers."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from diffdeck.engines.core.events import Status
from diffdeck.engines.core.flow_checks import file_sha256, flow_problem, resolve_flow
from diffdeck.engines.core.flows import Lora, Stage
from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER, load_registry
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.engines.record.png_metadata import read_record
from helpers import diffdeck, write_models
from PIL import Image

TIMEOUT = 180
QUIET = Intervals(progress_s=1.0, preview_s=1000.0)
PROMPT = "a large red circle on a blue background"


def tiny(folder: Path) -> dict:
    return {"source": str(folder), "memory_gb": 0.1, "defaults": {"steps": 6, "width": 64, "height": 64}}

REFINE = (Stage("txt2img", model="base"), Stage("refine", model="refiner", switch=0.5))


@pytest.fixture(scope="module")
def models_file(tmp_path_factory, tiny_models) -> Path:
    """A tiny SDXL base and refiner, the demo saved as an SD img2img pipeline, and flows on them."""
    import tinypipes

    root = tmp_path_factory.mktemp("refiner-models")
    refiner = tinypipes.save("sdxl-refiner", root / "tiny-refiner")
    demo_i2i = shutil.copytree(DEMO_FOLDER, root / "demo-img2img")
    index = json.loads((demo_i2i / "model_index.json").read_text())
    (demo_i2i / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionImg2ImgPipeline"}))
    path = write_models(root, {"base": tiny(tiny_models["sdxl"]), "refiner": tiny(refiner),
                               "demo-i2i": {"source": str(demo_i2i), "memory_gb": 0.1, "defaults": dict(DEMO.defaults)}})
    with path.open("a") as f:
        f.write("flows:\n"
                "  refined: {stages: [{kind: txt2img, model: base}, {kind: refine, model: refiner, switch: 0.5}]}\n"
                "  polish: {stages: [{kind: img2img, model: refiner, strength: 0.3}]}\n"
                "  on-refiner: {stages: [{kind: txt2img, model: refiner}]}\n")
    return path


@pytest.fixture(scope="module")
def registry(models_file):
    return load_registry(models_file)


def refusal(registry, spec: JobSpec) -> str:
    with pytest.raises(SpecError) as e:
        resolve_flow(spec, registry)
    return str(e.value)


def test_image_to_image_pipelines_are_their_family_and_listed_as_finishing_other_stages(registry, models_file):
    for name, family, pipeline in (("refiner", "sdxl", "StableDiffusionXLImg2ImgPipeline"),
                                   ("demo-i2i", "sd", "StableDiffusionImg2ImgPipeline")):
        files = registry.files(name)
        assert (files.family, files.pipeline_class, files.available, files.image_to_image) == (
            family, pipeline, True, True)
    assert not registry.files("base").image_to_image and not registry.files("demo").image_to_image
    listed = diffdeck("models", "--models", str(models_file), cwd=models_file.parent)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("refiner ")]
    assert row.split()[1:3] == ["sdxl", "yes"]
    assert ("  refiner: an image-to-image pipeline (StableDiffusionXLImg2ImgPipeline): img2img, refine and upscale "
            "stages only, after another stage; it cannot start a flow") in listed.stdout.splitlines()
    assert not any(line.startswith("  base: an image-to-image") for line in listed.stdout.splitlines())


def test_a_job_or_flow_starting_on_an_image_to_image_model_is_refused_with_the_reason(registry, tmp_path):
    said = ("is an image-to-image pipeline (StableDiffusionXLImg2ImgPipeline): img2img, refine and upscale stages "
            "only, after another stage; it cannot start a flow")
    assert refusal(registry, JobSpec(PROMPT, model="refiner")).startswith(f"model: 'refiner' {said}")
    assert refusal(registry, JobSpec(PROMPT, flow="on-refiner")).startswith(f"stages[0].model: 'refiner' {said}")
    assert flow_problem("on-refiner", registry).startswith(f"stages[0].model: 'refiner' {said}")
    assert refusal(registry, JobSpec(PROMPT, model="demo-i2i")).startswith("model: 'demo-i2i' is an image-to-image")

    refined = resolve_flow(JobSpec(PROMPT, flow="refined"), registry)
    assert [(s.kind, s.model, s.steps, s.width) for s in refined.stages] == [("txt2img", "base", 6, 64),
                                                                             ("refine", "refiner", 6, 64)]
    assert flow_problem("refined", registry) is None
    assert flow_problem("polish", registry) is None, "an img2img start on a refiner is checked as a promoted image"
    Image.new("RGB", (64, 64), "red").save(tmp_path / "init.png")
    assert resolve_flow(JobSpec(PROMPT, flow="polish", init_image=str(tmp_path / "init.png")), registry).model == "refiner"


def test_a_refiner_loads_as_its_own_img2img_pipeline_and_renders_nothing_from_a_prompt_alone(registry):
    from diffdeck.engines.worker.diffusers_adapter import Model

    model = Model(registry.get("refiner"), registry.files("refiner"))
    assert model.img2img is model.pipe, "no second pipeline: the loaded one is the img2img one"
    with pytest.raises(ValueError, match="'refiner' is an image-to-image pipeline .* no image from a prompt alone"):
        model.render(JobSpec(PROMPT, model="refiner", seeds=(1,), steps=2, width=64, height=64), 0, None)


@pytest.mark.slow
async def test_a_refiner_finishes_an_sdxl_base_in_a_leg_of_its_own_and_an_sd_img2img_model_upscales(registry, tmp_path):
    upscaled = (Stage("txt2img", model="demo", steps=8),
                Stage("upscale", model="demo-i2i", factor=2, strength=0.5, steps=4))
    async with Dispatcher(registry, tmp_path / "images", intervals=QUIET) as dispatcher:
        refined = dispatcher.submit(JobSpec(PROMPT, model="base", seed=7, stages=REFINE))
        base_only = dispatcher.submit(JobSpec(PROMPT, model="base", seed=7, steps=6))
        upscale = dispatcher.submit(JobSpec(PROMPT, seed=7, stages=upscaled))
        for job in (refined, base_only, upscale):
            await asyncio.wait_for(dispatcher.wait(job.id), TIMEOUT)
    assert refined.status == base_only.status == upscale.status == Status.DONE, refined.error or upscale.error
    (handed,) = refined.stages
    assert (handed["kind"], handed["model"]) == ("txt2img", "base") and Path(handed["latents"]).is_file()
    record = read_record(refined.images[0]["path"])["model"]
    assert (record["name"], record["pipeline_class"]) == ("refiner", "StableDiffusionXLImg2ImgPipeline")
    assert refined.images[0]["pixel_sha256"] != base_only.images[0]["pixel_sha256"], "the refiner drew the last half"
    assert read_record(upscale.images[0]["path"])["model"]["pipeline_class"] == "StableDiffusionImg2ImgPipeline"
    assert Image.open(upscale.images[0]["path"]).size == (128, 128)


def hub_lora(hub: Path, repo: str, file: Path, commit: str = "0123abcd") -> None:
    """`file` in a hub cache as huggingface_hub lays one out: the blob under its SHA-256, the
    snapshot's file a relative link to it, refs/main naming the snapshot's commit."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    digest = file_sha256(file)
    (folder / "blobs").mkdir(parents=True)
    shutil.copyfile(file, folder / "blobs" / digest)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "pytorch_lora_weights.safetensors").symlink_to(Path("../../blobs") / digest)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


@pytest.mark.slow
async def test_a_hub_lora_renders_from_the_file_hashed_at_submit(tmp_path, monkeypatch):
    import tinypipes

    local = tinypipes.save_lora(Path(DEMO.source) / "unet", tmp_path / "spots.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # the workers inherit it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_lora(tmp_path / "hub", "org/spots", local)
    registry = load_registry(write_models(tmp_path, {}))

    def job(*loras: Lora) -> JobSpec:
        return JobSpec(PROMPT, model="demo", seed=3, steps=8, loras=loras)

    async with Dispatcher(registry, tmp_path / "images", intervals=QUIET) as dispatcher:
        jobs = [dispatcher.submit(job(*loras)) for loras in (
            (), (Lora(str(local)),), (Lora("org/spots"),), (Lora("org/spots/pytorch_lora_weights.safetensors"),))]
        for each in jobs:
            await asyncio.wait_for(dispatcher.wait(each.id), TIMEOUT)
    assert [each.status for each in jobs] == [Status.DONE] * 4, [each.error for each in jobs]
    plain, from_file, from_repo, from_repo_file = (each.images[0]["pixel_sha256"] for each in jobs)
    assert from_file != plain
    assert from_repo == from_repo_file == from_file, "the hub's file is the local one"
    assert jobs[2].spec.loras[0].source == "org/spots" and jobs[2].spec.loras[0].sha256 == jobs[1].spec.loras[0].sha256
