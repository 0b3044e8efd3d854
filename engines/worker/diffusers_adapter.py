"""The diffusers adapter: load a pipeline, swap its scheduler, render one image with
step progress, previews and cancellation. Worker side: imports torch and diffusers.

All four families (SD 1.x/2.x, SDXL, SD3, Flux) go through the same `Model.render`.
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
from diffdeck.engines.worker.previews import latents_to_rgb, preview_factors

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


class Model:
    """One loaded pipeline. Not thread-safe: one render at a time."""

    def __init__(self, spec: ModelSpec, files: ModelFiles):
        self.spec = spec
        self.family = files.family
        self.device = pick_device(spec)
        self.dtype = pick_dtype(spec, files.family, self.device)
        self.folder = files.folder
        self._process = psutil.Process()
        self.pipe = self._load()
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

    def use_scheduler(self, name: str) -> None:
        if name == "default":
            self.pipe.scheduler = self._default_scheduler
            return
        class_name, overrides, _ = SCHEDULERS[name]
        cls = getattr(diffusers, class_name)
        self.pipe.scheduler = cls.from_config(self._default_scheduler.config, **overrides)

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

    def render(
        self,
        spec: JobSpec,
        index: int,
        on_step: Callable[[StepInfo], None],
        on_preview: Callable[[int, int, Callable[[], np.ndarray]], None],
        preview_interval_s: float,
        cancelled: Callable[[], bool],
    ):
        """Render image `index` of `spec`. Returns (PIL image, timings, peak memory bytes).
        `on_preview` gets a function that makes the preview: what it raises is its own."""
        seed = spec.seeds[index]
        start = time.perf_counter()
        state = {"prev": None, "last_preview": start, "denoised_at": start, "peak_rss": 0, "steps": 0}

        def check_cancelled() -> None:
            if cancelled():
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
            on_step(StepInfo(index, step + 1, total, now - start))
            if now - state["last_preview"] >= preview_interval_s and state["prev"] is not None:
                state["last_preview"] = now
                prev = state["prev"]
                on_preview(index, step + 1, lambda: self._preview(pipe.scheduler, prev, latents, spec))
            state["prev"] = latents.detach().clone()
            return kwargs

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            with self._interrupt.checking(check_cancelled):
                image = self.pipe(**self._call_args(spec, seed), callback_on_step_end=callback,
                                  callback_on_step_end_tensor_inputs=["latents"]).images[0]
        except BaseException:  # cancelled, or failed: offload hooks must not stay attached
            self.pipe.maybe_free_model_hooks()
            raise
        end = time.perf_counter()
        peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else max(
            state["peak_rss"], self._process.memory_info().rss)
        timings = {"denoise_s": state["denoised_at"] - start, "decode_s": end - state["denoised_at"]}
        return image, timings, peak

    def _call_args(self, spec: JobSpec, seed: int) -> dict[str, Any]:
        args = {
            "prompt": spec.prompt,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance,
            "width": spec.width,
            "height": spec.height,
            "generator": torch.Generator("cpu").manual_seed(seed),
        }
        if self.family != "flux":
            args["negative_prompt"] = spec.negative_prompt or None
        return args

    def _preview(self, scheduler, prev: torch.Tensor, cur: torch.Tensor, spec: JobSpec) -> np.ndarray:
        x0 = self._unpack(_denoised_estimate(scheduler, prev, cur), spec)
        return latents_to_rgb(x0[0].float().cpu().numpy(), self.preview_factors)

    def _unpack(self, latents: torch.Tensor, spec: JobSpec) -> torch.Tensor:
        if self.family == "flux":
            return type(self.pipe)._unpack_latents(latents, spec.height, spec.width, self.pipe.vae_scale_factor)
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


def _json_config(scheduler) -> dict[str, Any]:
    """The scheduler's full config as stored JSON (not dict(config): that drops defaults)."""
    return json.loads(scheduler.to_json_string())
