"""A flow on the record: `replay --check` replays every stage and names the first stage whose
image differs; the A1111 `parameters` chunk of a flow's image says what A1111 says of its own
img2img, hires fix, refiner and LoRAs, as an outside reader (sd-parsers) reads it."""

from __future__ import annotations

import re

import pytest
from diffdeck.engines.core.pixels import pixel_sha256
from diffdeck.engines.record.png_metadata import png_info
from diffdeck.engines.record.session import Session
from helpers import diffdeck
from PIL import Image
from sd_parsers import ParserManager

PROMPT = "a large red circle on a blue background"
# A1111's own reading of an extra network in a prompt, <lora:NAME:WEIGHT>: the pattern of
# re_extra_net in stable-diffusion-webui's modules/extra_networks.py (parse_prompt).
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def change_pixel(path) -> Image.Image:
    """The top-left pixel's red moved by one level: what other float kernels might do."""
    image = Image.open(path).convert("RGB")
    r, g, b = image.getpixel((0, 0))
    image.putpixel((0, 0), (r + 1 if r < 128 else r - 1, g, b))
    image.save(path)
    return image


@pytest.mark.slow
def test_replay_check_of_a_flow_names_the_first_stage_that_differs(tmp_path):
    rendered = diffdeck("render", PROMPT, "--flow", "demo-final", "--seed", "3", "--count", "3", "--session", "s",
                        cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    session = Session.open(tmp_path / "s", create=False)
    job = session.jobs["job-0001"]
    final = {image["image"]: image for image in job["images"]}
    first = {stage["image"]: stage for stage in job["stages"]}
    assert sorted(first) == [0, 1, 2] and {stage["stage"] for stage in first.values()} == {0}
    # image 1: its upscale's image a level off, as recorded (so not altered: different)
    final[1]["pixel_sha256"] = pixel_sha256(change_pixel(session.resolve(final[1]["path"])))
    session.compact()
    change_pixel(session.resolve(first[2]["path"]))  # image 2: its txt2img image changed since it was recorded

    result = diffdeck("replay", "s", "--check", "--into", "out", cwd=tmp_path)
    lines = [line for line in result.stdout.splitlines() if line.startswith("job-0001")]
    assert lines[0] == "job-0001 image 0 seed 3: identical", result.stdout
    assert lines[1].startswith("job-0001 image 1 seed 4: stage 1 (upscale) differs: different (PSNR")
    assert "largest difference 1/255" in lines[1]
    assert lines[2].startswith("job-0001 image 2 seed 5: stage 0 (txt2img) differs: altered")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (replayed,) = Session.open(tmp_path / "out" / "replay-1", create=False).jobs.values()
    assert sorted((s["image"], s["stage"]) for s in replayed["stages"]) == [(0, 0), (1, 0), (2, 0)], \
        "every stage of every image rendered again"


LORA = {"source": "/loras/spots.safetensors", "weight": 0.75, "sha256": "ab" * 32}
FLOW = [
    {"kind": "txt2img", "model": "base", "steps": 30, "guidance": 6.0, "width": 64, "height": 64, "loras": [LORA]},
    {"kind": "refine", "model": "refiner", "steps": 30, "switch": 0.8, "width": 64, "height": 64, "loras": []},
    {"kind": "upscale", "model": "refiner", "steps": 10, "factor": 1.5, "method": "latent", "strength": 0.3,
     "width": 96, "height": 96, "loras": [LORA]},
]


def parsed(tmp_path, **record_fields):
    """A PNG with the `parameters` chunk of a flow's image, as sd-parsers reads it."""
    record = {"seed": 7, "model": {"name": "refiner", "revision": "0123456789abcdef",
                                   "scheduler": {"class": "EulerDiscreteScheduler", "config": {}}},
              "spec": {"prompt": PROMPT, "negative_prompt": "blurry", "model": "base", "steps": 30, "guidance": 6.0,
                       "width": 64, "height": 64, "stages": FLOW, "loras": []}, **record_fields}
    path = tmp_path / "flow.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=png_info(record))
    return ParserManager().parse(path)


def test_an_outside_parser_reads_a_flows_hires_fix_refiner_and_loras(tmp_path):
    info = parsed(tmp_path)
    (sampler,) = info.samplers
    assert (sampler.name, sampler.parameters["steps"], sampler.parameters["seed"]) == ("Euler", "30", "7")
    assert sampler.model.name == "base" and sampler.model.hash is None, "the base's name, not the refiner's hash"
    assert {k: info.metadata.get(k) for k in ("Size", "Denoising strength", "Hires upscale", "Hires steps",
                                              "Hires upscaler", "Hires checkpoint", "Refiner",
                                              "Refiner switch at")} == {
        "Size": "64x64", "Denoising strength": "0.3", "Hires upscale": "1.5", "Hires steps": "10",
        "Hires upscaler": "Latent (nearest-exact)", "Hires checkpoint": "refiner", "Refiner": "refiner",
        "Refiner switch at": "0.8"}
    assert info.full_negative_prompt == "blurry"
    assert EXTRA_NETWORK.findall(info.full_prompt) == [("lora", "spots:0.75")], "once, though two stages use it"
    assert EXTRA_NETWORK.sub("", info.full_prompt).strip() == PROMPT


def test_a_stage_image_says_only_what_the_stages_up_to_it_did(tmp_path):
    info = parsed(tmp_path, stage=0, stage_kind="txt2img")
    assert not {"Denoising strength", "Hires upscale", "Refiner"} & set(info.metadata)
    assert EXTRA_NETWORK.findall(info.full_prompt) == [("lora", "spots:0.75")]
    assert "Refiner" in parsed(tmp_path, stage=1, stage_kind="refine").metadata


@pytest.mark.parametrize(("second", "reads"), [
    ({"kind": "upscale", "model": "tsdxl", "steps": 12, "factor": 2, "method": "lanczos", "strength": 0.5,
      "width": 128, "height": 128},
     {"Hires upscale": "2", "Hires checkpoint": "tsdxl", "Denoising strength": "0.5"}),
    # A1111 has no word for a plain img2img pass on another checkpoint; its hires fix is that pass
    # (at the same size): the checkpoint is named as its `Hires checkpoint`, with no `Hires upscale`
    ({"kind": "img2img", "model": "tsdxl", "steps": 12, "strength": 0.4, "width": 64, "height": 64},
     {"Hires upscale": None, "Hires checkpoint": "tsdxl", "Denoising strength": "0.4"}),
    ({"kind": "upscale", "model": "demo", "steps": 12, "factor": 2, "method": "lanczos", "strength": 0.5,
      "width": 128, "height": 128},
     {"Hires upscale": "2", "Hires checkpoint": None, "Denoising strength": "0.5"}),
])
def test_a_second_pass_on_another_checkpoint_is_named_as_a1111_names_its_hires_checkpoint(tmp_path, second, reads):
    first = {"kind": "txt2img", "model": "demo", "steps": 20, "guidance": 5.0, "width": 64, "height": 64, "loras": []}
    info = parsed(tmp_path, model={"name": second["model"], "revision": None,
                                   "scheduler": {"class": "EulerDiscreteScheduler", "config": {}}},
                  spec={"prompt": PROMPT, "negative_prompt": "", "model": "demo", "steps": 20, "guidance": 5.0,
                        "width": 64, "height": 64, "stages": [first, {**second, "loras": []}], "loras": []})
    (sampler,) = info.samplers
    assert sampler.model.name == "demo", "Model: the checkpoint of the first pass, as A1111 writes it"
    assert {k: info.metadata.get(k) for k in reads} == reads
