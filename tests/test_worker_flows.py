"""A flow's stages in one model's worker: img2img, upscale (pixel, latent, tiled), SDXL refine in one
worker and handed over to another, LoRA adapters loaded and unloaded per job. Through the real worker
process (`python -m diffdeck.engines.worker`) on the demo model and a tiny SDXL pipeline, driven over
its JSON lines as the Dispatcher drives it, one leg (stages of one model in a row) per job message."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diffdeck.engines.core.flows import Lora, Stage
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.core.registry import DEMO
from diffdeck.engines.core.spec import JobSpec, ModelSpec
from diffdeck.engines.core.worker_protocol import decode, encode
from diffdeck.engines.record.png_metadata import read_record
from diffdeck.engines.worker.tiles import Blender, boxes, overlap
from helpers import readline_within
from PIL import Image

ENDS = ("done", "failed", "cancelled")


class ServedWorker:
    """One worker process, its model loaded; jobs sent one at a time, their messages read back."""

    def __init__(self, spec: ModelSpec, log: Path):
        self.model = spec.name
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "diffdeck.engines.worker", "--model", json.dumps(spec.to_dict()),
             "--progress-interval", "0", "--preview-interval", "1000"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        while (message := self._read(120))["type"] != "ready":
            assert message["type"] == "hello", message

    def job(self, job_id: str, spec: JobSpec, out_dir: Path, **fields) -> list[dict]:
        """Every message of the job, its end (done, failed, cancelled) last."""
        self.process.stdin.write(encode("job", id=job_id, spec=spec.to_dict(), out_dir=str(out_dir), **fields))
        self.process.stdin.flush()
        messages = [self._read(120)]
        while messages[-1]["type"] not in ENDS:
            messages.append(self._read(120))
        return messages

    def close(self) -> None:
        self.process.stdin.write(encode("shutdown"))
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self._log.close()

    def _read(self, timeout: float) -> dict:
        line = readline_within(self.process.stdout, timeout, f"a message from the {self.model} worker")
        assert line, f"the {self.model} worker exited: {self._log.name}"
        return decode(line)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    worker = ServedWorker(DEMO, tmp_path_factory.mktemp("logs") / "demo.log")
    yield worker
    worker.close()


def job(stages=(), seeds=(3,), **fields) -> JobSpec:
    """A resolved job of the demo model (as the Dispatcher sends one)."""
    defaults = dict(prompt="a large red circle on a blue background", model="demo", steps=8, guidance=5.0,
                    width=64, height=64, seed=seeds[0], seeds=tuple(seeds), count=len(seeds), stages=tuple(stages))
    return JobSpec(**{**defaults, **fields})


def of(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m["type"] == kind]


def ended(messages: list[dict]) -> dict:
    assert messages[-1]["type"] == "done", messages[-1]
    return messages[-1]


TXT = Stage("txt2img", model="demo", steps=8, width=64, height=64)
LANCZOS = Stage("upscale", model="demo", steps=4, factor=2, method="lanczos", strength=0.5, width=128, height=128)


@pytest.mark.slow
def test_a_flow_keeps_every_stage_image_and_sends_the_last_as_the_job_image(demo, tmp_path):
    plain = of(demo.job("p", job(seeds=(3, 4)), tmp_path), "image")
    messages = demo.job("f", job((TXT, LANCZOS), seeds=(3, 4)), tmp_path, stages=[0, 1])
    ended(messages)
    kinds = [(m["type"], m["image"], m.get("stage")) for m in messages if m["type"] in ("stage_image", "image")]
    assert kinds == [("stage_image", 0, 0), ("image", 0, None), ("stage_image", 1, 0), ("image", 1, None)]
    for index, (seed, first) in enumerate(zip((3, 4), plain)):
        stage, final = of(messages, "stage_image")[index], of(messages, "image")[index]
        assert stage["pixel_sha256"] == first["pixel_sha256"], "a flow's txt2img stage is the plain render"
        assert (stage["kind"], stage["model"], stage["seed"]) == ("txt2img", "demo", seed) and "latents" not in stage
        assert Path(stage["path"]).name == f"f-{index:02d}-{seed}.s0-txt2img.png"
        assert Path(final["path"]).name == f"f-{index:02d}-{seed}.png"
        assert Image.open(final["path"]).size == (128, 128) and Image.open(stage["path"]).size == (64, 64)
        assert {"denoise_s", "decode_s", "save_s"} <= set(stage["timings"]) and stage["peak_memory"] > 0
        record = read_record(stage["path"])
        assert (record["stage"], record["stage_kind"]) == (0, "txt2img")
        assert "stage" not in read_record(final["path"]) and len(record["spec"]["stages"]) == 2
    steps = of(messages, "step")
    assert {m["stages"] for m in steps} == {2} and [m["stage"] for m in steps if m["image"] == 0] == [0] * 8 + [1] * 2
    made = of(messages, "stage_image") + of(messages, "image")
    assert all(set(m["timings"]) == {"prepare_s", "denoise_s", "decode_s", "save_s"} for m in made)
    for key, total in ended(messages)["timings"].items():
        assert total == pytest.approx(sum(m["timings"][key] for m in made), abs=1e-3), key


@pytest.mark.slow
def test_two_legs_hand_over_through_the_files_and_give_what_one_leg_gives(demo, tmp_path):
    one = of(demo.job("one", job((TXT, LANCZOS)), tmp_path, stages=[0, 1]), "image")[0]
    first = demo.job("two", job((TXT, LANCZOS)), tmp_path, stages=[0, 0])
    assert [m["type"] for m in first if m["type"] != "step"] == ["stage_image", "done"]
    second = demo.job("two", job((TXT, LANCZOS)), tmp_path, stages=[1, 1],
                      inputs={"0": {"image": of(first, "stage_image")[0]["path"]}})
    assert [m["type"] for m in second if m["type"] != "step"] == ["image", "done"]
    assert of(second, "image")[0]["pixel_sha256"] == one["pixel_sha256"]


@pytest.mark.slow
def test_img2img_starts_from_the_init_image_as_far_as_its_strength_says(demo, tmp_path):
    init = of(demo.job("init", job(prompt="a small yellow star on a black background", seeds=(9,)), tmp_path),
              "image")[0]["path"]
    big_init = tmp_path / "big.png"
    Image.open(init).resize((96, 96)).save(big_init)

    def img2img(strength: float, source: str = init) -> Image.Image:
        stage = Stage("img2img", model="demo", steps=8, strength=strength, width=64, height=64)
        messages = demo.job(f"i{strength}", job((stage,)), tmp_path, stages=[0, 0], inputs={"0": {"image": source}})
        return Image.open(of(messages, "image")[0]["path"])

    def distance(a: Image.Image, b: Image.Image) -> float:
        return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())

    light, full, start = img2img(0.3), img2img(1.0), Image.open(init)
    assert 0 < distance(light, start) < distance(full, start)
    assert img2img(0.3).tobytes() == light.tobytes(), "the same seed gives the same pixels"
    assert img2img(0.3, str(big_init)).size == (64, 64), "the init is resized to the size the stage renders"


@pytest.mark.slow
def test_an_init_image_changed_since_submit_is_refused_by_the_worker(demo, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), "red").save(init)
    stage = Stage("img2img", model="demo", steps=2, strength=0.5, width=64, height=64)
    submitted = job((stage,), init_image=str(init), init_sha256=hashlib.sha256(init.read_bytes()).hexdigest())
    inputs = {"0": {"image": str(init)}}
    assert demo.job("same", submitted, tmp_path, stages=[0, 0], inputs=inputs)[-1]["type"] == "done"
    Image.new("RGB", (64, 64), "blue").save(init)
    failed = demo.job("changed", submitted, tmp_path, stages=[0, 0], inputs=inputs)[-1]
    assert failed["type"] == "failed" and f"the init image {init} has changed since the job was submitted" \
        in failed["error"]


@pytest.mark.slow
def test_a_latent_upscale_renders_latents_for_the_next_stage_and_decodes_them_for_its_png(demo, tmp_path):
    plain = of(demo.job("p", job(), tmp_path), "image")[0]
    latent = dataclasses.replace(LANCZOS, method="latent", strength=0.6)
    messages = demo.job("l", job((TXT, latent)), tmp_path, stages=[0, 1])
    ended(messages)
    assert of(messages, "stage_image")[0]["pixel_sha256"] == plain["pixel_sha256"], "decoded as the pipeline decodes"
    final = of(messages, "image")[0]
    lanczos = of(demo.job("z", job((TXT, dataclasses.replace(LANCZOS, strength=0.6))), tmp_path, stages=[0, 1]),
                 "image")[0]
    assert Image.open(final["path"]).size == (128, 128) and final["pixel_sha256"] != lanczos["pixel_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lanczos", "latent"])
def test_a_tiled_upscale_renders_tile_by_tile_the_same_every_time(demo, tmp_path, method):
    tiled = dataclasses.replace(LANCZOS, method=method, tile=80)
    runs = [demo.job(f"t{n}", job((TXT, tiled)), tmp_path, stages=[0, 1]) for n in range(2)]
    whole = of(demo.job("w", job((TXT, dataclasses.replace(tiled, tile=None))), tmp_path, stages=[0, 1]), "image")[0]
    finals = [of(run, "image")[0] for run in runs]
    assert finals[0]["pixel_sha256"] == finals[1]["pixel_sha256"] != whole["pixel_sha256"]
    assert Image.open(finals[0]["path"]).size == (128, 128)
    tile_ends = [m for m in runs[0] if m["type"] == "step" and m["stage"] == 1 and m["step"] == m["total"]]
    assert len(tile_ends) == len(boxes(128, 128, 80)) == 4


@pytest.mark.slow
def test_refine_hands_sdxl_latents_over_in_one_worker_and_across_two(tiny_models, tmp_path):
    base, refiner = (ServedWorker(ModelSpec(name=name, source=str(tiny_models["sdxl"])), tmp_path / f"{name}.log")
                     for name in ("base", "refiner"))
    try:
        def flow(refined_by: str) -> JobSpec:
            return job((Stage("txt2img", model="base", steps=6, width=64, height=64),
                        Stage("refine", model=refined_by, steps=6, switch=0.5, width=64, height=64)), model="base")

        together = of(base.job("a", flow("base"), tmp_path, stages=[0, 1]), "image")[0]
        first = base.job("b", flow("refiner"), tmp_path, stages=[0, 0])
        handed = of(first, "stage_image")[0]
        assert handed["kind"] == "txt2img" and Path(handed["latents"]).name == "b-00-3.s0.latents.safetensors"
        second = refiner.job("b", flow("refiner"), tmp_path, stages=[1, 1], inputs={"0": {"latents": handed["latents"]}})
        assert of(second, "image")[0]["pixel_sha256"] == together["pixel_sha256"]
        assert file_pixel_sha256(handed["path"]) == handed["pixel_sha256"]
    finally:
        base.close()
        refiner.close()


@pytest.mark.slow
def test_refine_on_a_model_that_cannot_hand_over_fails_the_job_and_the_worker_lives_on(demo, tmp_path):
    refine = Stage("refine", model="demo", steps=8, switch=0.5, width=64, height=64)
    failed = demo.job("r", job((TXT, refine)), tmp_path, stages=[0, 1])[-1]
    assert failed["type"] == "failed" and "refine is for SDXL models" in failed["error"]
    ended(demo.job("after", job(), tmp_path))


@pytest.mark.slow
def test_loras_are_loaded_for_their_job_only(demo, tmp_path):
    import tinypipes

    lora = tinypipes.save_lora(Path(DEMO.source) / "unet", tmp_path / "loras" / "spots.safetensors")

    def render(job_id: str, **fields) -> list[dict]:
        messages = demo.job(job_id, job(**fields), tmp_path, **({"stages": [0, 1]} if fields.get("stages") else {}))
        ended(messages)
        return [m["pixel_sha256"] for m in messages if m["type"] in ("stage_image", "image")]

    plain = render("base")
    on = render("on", loras=(Lora(str(lora), 1.0),))
    assert on != plain
    assert render("zero", loras=(Lora(str(lora), 0.0),)) == plain
    assert render("after") == plain, "unloaded: the next job renders with the base weights as they were"
    tinypipes.save_lora(Path(DEMO.source) / "unet", lora, seed=1)
    assert render("retrained", loras=(Lora(str(lora), 1.0),)) not in (on, plain), "each job loads its files afresh"
    missing = demo.job("missing", job(loras=(Lora(str(tmp_path / "gone.safetensors")),)), tmp_path)[-1]
    assert missing["type"] == "failed" and "does not exist" in missing["error"]
    stage, _ = render("flow", stages=(dataclasses.replace(TXT, loras=()), LANCZOS), loras=(Lora(str(lora)),))
    assert stage == plain[0], "a stage that names no adapters renders without the job's"
    assert render("after-flow") == plain


def test_tiles_cover_the_image_on_the_8_pixel_grid_with_every_overlap_at_least_an_eighth():
    for width, height, tile in [(128, 128, 80), (1000, 264, 256), (64, 64, 64), (520, 136, 128)]:
        cover = np.zeros((height, width), int)
        for box in boxes(width, height, tile):
            assert box.x % 8 == box.y % 8 == 0 and box.width <= tile and box.height <= tile
            cover[box.y:box.y + box.height, box.x:box.x + box.width] += 1
        assert cover.min() >= 1
        xs = sorted({b.x for b in boxes(width, height, tile)})
        assert all(b - a <= tile - overlap(tile) for a, b in zip(xs, xs[1:]))


def test_tiles_of_one_image_blend_back_into_it_and_seams_ramp_linearly():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (136, 200, 3), dtype=np.uint8))
    blender = Blender(200, 136, 64)
    for box in boxes(200, 136, 64):
        blender.add(box, image.crop(box.crop()))
    assert blender.image().tobytes() == image.tobytes()

    dark_light = Blender(128, 8, 80)
    for box, shade in zip(boxes(128, 8, 80), (0, 240)):
        dark_light.add(box, Image.new("RGB", (box.width, box.height), (shade,) * 3))
    row = np.asarray(dark_light.image())[0, :, 0].astype(int)
    rise = np.flatnonzero(np.diff(row))
    assert (rise.min(), rise.max()) == (47, 79), "the whole overlap, columns 48 to 79, and nothing else changes"
    assert (np.diff(row) >= 7).sum() == 31 and np.diff(row).max() <= 8, "a straight line from 0 to 240"
