"""The stages of a flow as one model's worker runs them (the kinds: diffdeck.engines.core.flows).

Every stage is one call of the model's txt2img pipeline or of the img2img one made from it
(the same weights), with a generator seeded afresh with the image's seed. A stage hands the next
its image, and its latents where the next takes latents: a `refine` (the SDXL hand-over, part-way
through the schedule) or a `latent` upscale of the same model. Worker side: imports torch.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffdeck.engines.core.flows import Stage
from diffdeck.engines.core.pixels import pixel_sha256
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.worker.diffusers_adapter import Hooks, Model
from diffdeck.engines.worker.tiles import Blender, boxes
from PIL import Image
from safetensors.torch import load_file

RESAMPLERS = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
              "nearest": Image.Resampling.NEAREST}
LATENT_FAMILIES = ("sd", "sdxl")  # whose pipelines take and give plain (unpacked) latents
LATENTS_KEY = "latents"  # the tensor's name in a .latents.safetensors file


@dataclass
class Handed:
    """What one stage hands the next: its image, and its latents where the next stage takes them."""

    image: Image.Image | None = None
    latents: torch.Tensor | None = None

    @classmethod
    def read(cls, files: dict[str, str], sha256: str | None = None) -> "Handed":
        """The previous leg's output, or a flow's init image, from the files a job message names.
        `sha256`: the init image's at submit; ValueError when the file is not that one now, or when
        a previous leg's image no longer has the pixels its record names (`files["pixel_sha256"]`)."""
        image = latents = None
        if files.get("image"):
            data = Path(files["image"]).read_bytes()
            if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
                raise ValueError(f"the init image {files['image']} has changed since the job was submitted; "
                                 "submit the job again to start from the file as it is now")
            with Image.open(io.BytesIO(data)) as f:
                if files.get("pixel_sha256") and pixel_sha256(f) != files["pixel_sha256"]:
                    raise ValueError(f"the stage image {files['image']} is not the one recorded (its pixels have "
                                     "changed); retry the job to render the flow from its start")
                image = f.convert("RGB")
        if files.get("latents"):
            latents = load_file(files["latents"])[LATENTS_KEY]
        return cls(image, latents)


@dataclass
class Output:
    image: Image.Image
    latents: torch.Tensor | None  # for the next stage, where it takes latents
    timings: dict[str, float]
    peak: int


class StageRunner:
    """Runs the stages of one job's flow on one loaded model."""

    def __init__(self, model: Model, spec: JobSpec):
        self.model = model
        self.spec = spec

    def model_of(self, i: int) -> str:
        return self.spec.stages[i].model or self.spec.model

    def hands_latents(self, i: int) -> bool:
        """Whether stage `i` renders latents for the stage after it."""
        following = self.spec.stages[i + 1] if i + 1 < len(self.spec.stages) else None
        return following is not None and (following.kind == "refine" or (
            following.kind == "upscale" and following.method == "latent" and self.model_of(i + 1) == self.model_of(i)))

    def run(self, i: int, index: int, handed: Handed, hooks: Hooks, since: float | None = None) -> Output:
        """Stage `i` of image `index`, from what the stage before handed it. Its timings: prepare_s
        (scheduler, LoRA adapters, the img2img pipeline, the resample or VAE encode of its input;
        from `since`, where the caller read that input from files), then the pipeline call's."""
        since = time.perf_counter() if since is None else since
        stage = self.spec.stages[i]
        if self.model_of(i) != self.model.spec.name:
            raise ValueError(f"stage {i} ({stage.kind}) is for model {self.model_of(i)!r}, "
                             f"not this worker's {self.model.spec.name!r}")
        self.model.use_scheduler(stage.scheduler or self.spec.scheduler)
        self.model.adapters.use(self.spec.loras if stage.loras is None else stage.loras)
        size = stage.width, stage.height  # filled in at submit (resolve_flow), on restore too
        pipe = self.model.txt2img if stage.kind == "txt2img" else self.model.img2img
        source = self._source(i, stage, handed, size)
        prepare_s = time.perf_counter() - since
        if stage.kind == "upscale" and stage.tile and max(size) > stage.tile:
            if self.hands_latents(i) and self.spec.stages[i + 1].kind == "refine":
                raise ValueError(f"stage {i}: a tiled upscale cannot hand latents to a refine stage")
            output = self._tiled(pipe, i, index, source, size, stage.tile, hooks)
        else:
            args = self._args(pipe, i, index, source, size)
            if self.hands_latents(i):
                args.update(self._hand_over(pipe, i))
            output = Output(*self.model.call(pipe, args, index, hooks, size))
        output.timings = {"prepare_s": prepare_s, **output.timings}
        return output

    def _source(self, i: int, stage: Stage, handed: Handed, size: tuple[int, int]) -> Image.Image | torch.Tensor | None:
        """What the stage starts from: None (txt2img), an image, or latents."""
        if stage.kind == "txt2img":
            return None
        if stage.kind == "refine" or (stage.kind == "upscale" and stage.method == "latent"):
            self._check_latent_family(f"stage {i} ({stage.kind})")
        if stage.kind == "refine":
            if handed.latents is None:
                raise ValueError(f"stage {i} (refine) needs the latents of the stage before it")
            return handed.latents
        if handed.image is None:
            raise ValueError(f"stage {i} ({stage.kind}) needs an image to start from; none was given")
        if stage.kind == "upscale" and stage.method == "latent":
            latents = handed.latents if handed.latents is not None else self.model.encode(handed.image)
            scale = self.model.vae_scale_factor
            return torch.nn.functional.interpolate(
                latents, size=(size[1] // scale, size[0] // scale), mode="nearest-exact")
        if handed.image.size == size:
            return handed.image
        return handed.image.resize(size, RESAMPLERS[stage.method or "lanczos"])

    def _args(self, pipe, i: int, index: int, source, size: tuple[int, int]) -> dict[str, Any]:
        stage = self.spec.stages[i]
        args = self.model.call_args(self.spec, self.spec.seeds[index], stage.steps, stage.guidance)
        if stage.kind == "txt2img" or _takes(pipe, "width"):
            args.update(width=size[0], height=size[1])
        if stage.kind == "refine":
            if not _takes(pipe, "denoising_start"):
                raise ValueError(f"stage {i} (refine): {type(pipe).__name__} cannot take over part-way "
                                 "(denoising_start); refine is for SDXL models")
            args.update(image=source, denoising_start=stage.switch)
        elif source is not None:
            args.update(image=source, strength=stage.strength)
        return args

    def _hand_over(self, pipe, i: int) -> dict[str, Any]:
        """Call arguments that make stage `i` give latents to the next: all of them, or (for a refine)
        those of the schedule up to its switch."""
        self._check_latent_family(f"stage {i} ({self.spec.stages[i].kind}), handing latents over,")
        following = self.spec.stages[i + 1]
        if following.kind != "refine":
            return {"output_type": "latent"}
        if not _takes(pipe, "denoising_end"):
            raise ValueError(f"stage {i}: {type(pipe).__name__} cannot stop part-way (denoising_end); "
                             "refine is for SDXL models")
        return {"output_type": "latent", "denoising_end": following.switch}

    def _tiled(self, pipe, i: int, index: int, source, size: tuple[int, int], tile: int, hooks: Hooks) -> Output:
        """The img2img pass in tiles, in a fixed order, each with the image's seed; seams blended."""
        blender = Blender(*size, tile)
        timings, peak = {"denoise_s": 0.0, "decode_s": 0.0}, 0
        scale = self.model.vae_scale_factor
        for box in boxes(*size, tile):
            if isinstance(source, Image.Image):
                part = source.crop(box.crop())
            else:
                part = source[..., box.y // scale:(box.y + box.height) // scale,
                              box.x // scale:(box.x + box.width) // scale]
            image, _, tile_timings, tile_peak = self.model.call(
                pipe, self._args(pipe, i, index, part, (box.width, box.height)), index, hooks, (box.width, box.height))
            blender.add(box, image)
            timings = {k: timings[k] + tile_timings[k] for k in timings}
            peak = max(peak, tile_peak)
        return Output(blender.image(), None, timings, peak)

    def _check_latent_family(self, what: str) -> None:
        if self.model.family not in LATENT_FAMILIES:
            raise ValueError(f"{what} works on latents, which only SD and SDXL models hand over; "
                             f"{self.model.spec.name!r} is {self.model.family}")


def _takes(pipe, name: str) -> bool:
    return name in inspect.signature(type(pipe).__call__).parameters
