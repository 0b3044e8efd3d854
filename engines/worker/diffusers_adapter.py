"""The diffusers adapter: load a pipeline, swap its scheduler, render one image with
step progress, previews and cancellation. Worker side: imports torch and diffusers.

All four families (SD 1.x/2.x, SDXL, SD3, Flux) go through the same `Model.call`: a plain job's
txt2img (`Model.render`) and every stage of a flow (diffdeck.engines.worker.stages), on the
txt2img pipeline or the img2img one made from it, which shares its weights. An image-to-image
model (an SDXL refiner) is loaded as the img2img pipeline it is, and has no txt2img one.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import diffusers
import numpy as np
import psutil
import torch
from diffdeck.engines.core.registry import ModelFiles
from diffdeck.engines.core.spec import SCHEDULERS, JobSpec, ModelSpec
from diffdeck.engines.worker.adapters import Adapters
from diffdeck.engines.worker.previews import latents_to_rgb, preview_factors
from PIL import Image

GPU_DTYPES = {"sd": torch.float16, "sdxl": torch.float16, "sd3": torch.bfloat16, "flux": torch.bfloat16}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Cancelled(Exception):
    """Raised from the step callback, or inside a step from the next module to run: diffusers
    stops at once and skips the VAE decode."""

    def __init__(self, step: int):
        super().__init__(f"cancelled at step {step}")
        self.step = step


def pick_device(spec: ModelSpec) -> str:
    if spec.device != "auto":
        return spec.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(spec: ModelSpec, family: str, device: str) -> torch.dtype:
    if spec.dtype != "auto":
        return DTYPES[spec.dtype]
    return GPU_DTYPES[family] if device == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class StepInfo:
    image: int
    step: int  # 1-based: steps completed
    total: int
    elapsed_s: float


@dataclass(frozen=True)
class Hooks:
    """What a job asks of every pipeline call: step progress, previews, cancellation.
    `on_preview` gets a function that makes the preview: what it raises is its own."""

    on_step: Callable[[StepInfo], None]
    on_preview: Callable[[int, int, Callable[[], np.ndarray]], None]
    preview_interval_s: float
    cancelled: Callable[[], bool]


class Model:
    """One loaded pipeline. Not thread-safe: one render at a time."""

    def __init__(self, spec: ModelSpec, files: ModelFiles):
        self.spec = spec
        self.family = files.family
        self.image_to_image = files.image_to_image  # a refiner: no txt2img pipeline
        self.device = pick_device(spec)
        self.dtype = pick_dtype(spec, files.family, self.device)
        self.folder = files.folder
        self._process = psutil.Process()
        self.pipe = self._load()
        self._img2img = None
        self.adapters = Adapters(self.pipe)
        self._interrupt = Interrupt(self.pipe)
        self.preview_factors = preview_factors(self.family, self.folder, self.pipe.vae.config.latent_channels)
        self.pipeline_class = type(self.pipe).__name__
        self._default_scheduler = self.pipe.scheduler

    def _load(self):
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            self.folder, dtype=self.dtype, use_safetensors=not self.spec.allow_pickle)
        pipe.set_progress_bar_config(disable=True)
        if self.device == "cuda" and self.spec.offload == "model":
            pipe.enable_model_cpu_offload()
        elif self.device == "cuda" and self.spec.offload == "sequential":
            pipe.enable_sequential_cpu_offload()
        else:
            pipe.to(self.device)
        return pipe

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def txt2img(self):
        """The pipeline that renders from a prompt alone. ValueError for an image-to-image model
        (a refiner: its UNet may not even take a txt2img pipeline's inputs), refused at submit."""
        if self.image_to_image:
            raise ValueError(f"model {self.spec.name!r} is an image-to-image pipeline ({self.pipeline_class}): "
                             "it renders no image from a prompt alone, only img2img, refine and upscale stages")
        return self.pipe

    @property
    def img2img(self):
        """The img2img pipeline of this model's family: the loaded one where it is one, else made
        once from it: the same modules, no second copy of the weights (LoRA adapters and the
        scheduler included)."""
        if self._img2img is None:
            self._img2img = self.pipe if self.image_to_image else diffusers.AutoPipelineForImage2Image.from_pipe(
                self.pipe)
            self._img2img.set_progress_bar_config(disable=True)
        self._img2img.scheduler = self.pipe.scheduler
        return self._img2img

    def use_scheduler(self, name: str) -> None:
        if name == "default":
            self.pipe.scheduler = self._default_scheduler
            return
        class_name, overrides, _ = SCHEDULERS[name]
        cls = getattr(diffusers, class_name)
        self.pipe.scheduler = cls.from_config(self._default_scheduler.config, **overrides)

    def end_job(self) -> None:
        """Unload the job's LoRA adapters: the next job gets the base model's weights as they were."""
        self.adapters.clear()

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    def settings(self) -> dict[str, Any]:
        """What besides weights and scheduler decides the pixels: offload, attention, determinism."""
        denoiser = getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)
        processors = getattr(denoiser, "attn_processors", {})
        return {
            "offload": self.spec.offload if self.device == "cuda" else "none",
            "attention": sorted({type(p).__name__ for p in processors.values()}),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }

    def scheduler_record(self) -> dict[str, Any]:
        s = self.pipe.scheduler
        return {"class": type(s).__name__, "config": _json_config(s)}

    def render(self, spec: JobSpec, index: int, hooks: Hooks):
        """Render image `index` of a job without stages. Returns (PIL image, timings, peak memory bytes);
        prepare_s is the LoRA adapters' load."""
        started = time.perf_counter()
        self.adapters.use(spec.loras)
        prepared = {"prepare_s": time.perf_counter() - started}
        image, _, timings, peak = self.call(
            self.txt2img, {**self.call_args(spec, spec.seeds[index]), "width": spec.width, "height": spec.height},
            index, hooks, (spec.width, spec.height))
        return image, {**prepared, **timings}, peak

    def call(self, pipe, args: dict[str, Any], index: int, hooks: Hooks, size: tuple[int, int]):
        """One pipeline call for image `index`, `size` (width, height) its output's. Returns (PIL image,
        latents or None, timings, peak memory bytes): with output_type "latent" the pipeline's latents,
        and the image decoded from them."""
        start = time.perf_counter()
        state = {"prev": None, "last_preview": start, "denoised_at": start, "peak_rss": 0, "steps": 0}

        def check_cancelled() -> None:
            if hooks.cancelled():
                raise Cancelled(state["steps"])

        def callback(pipe, step, timestep, kwargs):
            now = time.perf_counter()
            state["steps"] = step + 1
            check_cancelled()
            latents = kwargs["latents"]
            total = pipe.num_timesteps
            if step + 1 == total and self.device == "cuda":
                torch.cuda.synchronize()
            state["denoised_at"] = time.perf_counter()
            state["peak_rss"] = max(state["peak_rss"], self._process.memory_info().rss)
            hooks.on_step(StepInfo(index, step + 1, total, now - start))
            if now - state["last_preview"] >= hooks.preview_interval_s and state["prev"] is not None:
                state["last_preview"] = now
                prev = state["prev"]
                hooks.on_preview(index, step + 1, lambda: self._preview(pipe.scheduler, prev, latents, size))
            state["prev"] = latents.detach().clone()
            return kwargs

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        latents = None
        try:
            with self._interrupt.checking(check_cancelled):
                images = pipe(**args, callback_on_step_end=callback,
                              callback_on_step_end_tensor_inputs=["latents"]).images
                if args.get("output_type") == "latent":
                    latents, images = images, [self.decode(images)]
        except BaseException:  # cancelled, or failed: offload hooks must not stay attached
            pipe.maybe_free_model_hooks()
            raise
        end = time.perf_counter()
        peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else max(
            state["peak_rss"], self._process.memory_info().rss)
        timings = {"denoise_s": state["denoised_at"] - start, "decode_s": end - state["denoised_at"]}
        return images[0], latents, timings, peak

    def call_args(self, spec: JobSpec, seed: int, steps: int | None = None,
                  guidance: float | None = None) -> dict[str, Any]:
        """What every call of a job takes: its prompts, steps and guidance (a stage's, where given),
        and a generator seeded afresh with the image's seed."""
        args = {
            "prompt": spec.prompt,
            "num_inference_steps": steps or spec.steps,
            "guidance_scale": spec.guidance if guidance is None else guidance,
            "generator": torch.Generator("cpu").manual_seed(seed),
        }
        if self.family != "flux":
            args["negative_prompt"] = spec.negative_prompt or None
        return args

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        """The image of a UNet family's latents, as its pipeline's own decode makes it."""
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast  # SDXL's VAE overflows in float16
        if upcast:
            vae.to(torch.float32)
        try:
            latents = latents.to(vae.device, vae.dtype)
            shift, scale = _latent_scaling(vae, latents)
            pixels = vae.decode(latents / scale + shift, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
        return self.pipe.image_processor.postprocess(pixels, output_type="pil")[0]

    @torch.no_grad()
    def encode(self, image: Image.Image) -> torch.Tensor:
        """A UNet family's latents of `image` (scaled as its pipelines hand them over): the mode of
        the VAE's posterior, so the same image gives the same latents."""
        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(image).to(vae.device, vae.dtype)
        latents = vae.encode(pixels).latent_dist.mode()
        shift, scale = _latent_scaling(vae, latents)
        return (latents - shift) * scale

    def _preview(self, scheduler, prev: torch.Tensor, cur: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        x0 = self._unpack(_denoised_estimate(scheduler, prev, cur), size)
        return latents_to_rgb(x0[0].float().cpu().numpy(), self.preview_factors)

    def _unpack(self, latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.family == "flux":
            width, height = size
            return type(self.pipe)._unpack_latents(latents, height, width, self.pipe.vae_scale_factor)
        return latents


class Interrupt:
    """Cancellation inside a step. A large render can spend seconds or minutes in one
    denoising step, or in the VAE decode, and the step callback only runs between steps:
    a forward pre-hook on every module that has submodules (a block, an attention, a resnet)
    runs the current check, so a cancel stops the pipeline at the next module it enters.
    Leaf modules are left alone: each is a single kernel that cannot be cut anyway."""

    def __init__(self, pipe):
        self._check: Callable[[], None] | None = None
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                for module in component.modules():
                    if next(module.children(), None) is not None:
                        module.register_forward_pre_hook(self._hook)

    @contextlib.contextmanager
    def checking(self, check: Callable[[], None]):
        """Run `check` (which raises to stop) whenever a module is entered, until the block ends."""
        self._check = check
        try:
            yield
        finally:
            self._check = None

    def _hook(self, module, args) -> None:
        if self._check is not None:
            self._check()


def _denoised_estimate(scheduler, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """x0 from two consecutive latents of a first-order sigma stepper: with x = x0 + sigma * eps and
    eps the same across one step, two points (sigma, x) give x0. Schedulers without sigmas (DDIM,
    PNDM) preview the current latents as they are."""
    sigmas, i = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if sigmas is None or i is None or not 1 <= i < len(sigmas):
        return cur
    s_prev, s_cur = float(sigmas[i - 1]), float(sigmas[i])
    if s_cur == s_prev:
        return cur
    return cur - s_cur * (cur - prev) / (s_cur - s_prev)


def _latent_scaling(vae, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """(shift, scale) with which a UNet family's pipelines hand latents over: (VAE latents - shift) * scale."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return 0.0, vae.config.scaling_factor
    shape = (1, -1, 1, 1)
    return (torch.tensor(mean).view(shape).to(like),
            vae.config.scaling_factor / torch.tensor(std).view(shape).to(like))


def _json_config(scheduler) -> dict[str, Any]:
    """The scheduler's full config as stored JSON (not dict(config): that drops defaults)."""
    return json.loads(scheduler.to_json_string())
