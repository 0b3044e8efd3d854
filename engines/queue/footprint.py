"""Whether a size can be rendered: refused at submit, before a worker spends minutes on it.

UI side: reads the model's JSON configs, never torch. Two bounds:
- an estimate of the memory one image of that size needs (the model's weights, as the memory
  budget counts them, plus the larger of the denoiser's and the VAE decoder's activations)
  against the Dispatcher's memory budget;
- a ceiling that needs no estimate: at most `AREA_LIMIT` times the model's native area (its
  default size). Past it a model draws nothing it was made for, and one step can take an hour.

The estimate is rough by design: it counts the largest activations of each stage (attention as
the memory-efficient kernels of torch 2 make it, linear in the tokens), not every buffer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from diffdeck.engines.core.spec import JobSpec, SpecError

AREA_LIMIT = 256  # times the native area: 16 times a side
CFG_BATCH = {"sd": 2, "sdxl": 2, "sd3": 2, "flux": 1}  # Flux is guidance-distilled: one pass
TEXT_TOKENS = {"sd3": 333, "flux": 512}  # joined to the image tokens by the transformers
_LIVE_UNET = 10  # tensors of the first level's size alive at once: skips, resnet, norm
_LIVE_BLOCK = 16  # widths of one transformer block alive at once: q, k, v, out, MLP (4x), norms
_LIVE_DECODER = 6  # tensors of the decoder's last level alive at once: resnet, norm, upsample


@dataclass(frozen=True)
class Budget:
    gb: float
    where: str  # "GPU" or "RAM"


@dataclass(frozen=True)
class Footprint:
    """What one image of a model needs, besides its size: what its configs say."""

    family: str
    weights_gb: float
    element_bytes: int  # of the weights' dtype
    denoiser: dict[str, Any]
    vae: dict[str, Any]

    @classmethod
    def read(cls, folder: Path, family: str, weights_gb: float, element_bytes: int) -> "Footprint | None":
        """None when the model's configs cannot be read (not downloaded, not a diffusers folder)."""
        denoiser = _config(folder, "transformer" if family in ("sd3", "flux") else "unet")
        vae = _config(folder, "vae")
        if denoiser is None or vae is None:
            return None
        return cls(family, weights_gb, element_bytes, denoiser, vae)

    def activation_bytes(self, width: int, height: int) -> int:
        return max(self._denoise_bytes(width, height), self._decode_bytes(width, height))

    def total_gb(self, width: int, height: int) -> float:
        return self.weights_gb + self.activation_bytes(width, height) / 1e9

    def _scale(self) -> int:
        """Pixels per latent a side: the VAE halves the size at each level but the last."""
        return 2 ** (len(self.vae.get("block_out_channels", (0,) * 4)) - 1)

    def _denoise_bytes(self, width: int, height: int) -> int:
        batch, scale, c = CFG_BATCH[self.family], self._scale(), self.denoiser
        latent = (width // scale) * (height // scale)
        if self.family in ("sd3", "flux"):
            patch = c.get("patch_size", 2) if self.family == "sd3" else 2  # Flux packs 2x2 latents
            tokens = latent // patch**2 + TEXT_TOKENS[self.family]
            inner = c.get("num_attention_heads", 24) * c.get("attention_head_dim", 64)
            return batch * tokens * inner * _LIVE_BLOCK * self.element_bytes
        channels = list(c.get("block_out_channels", (320,)))
        first = batch * latent * channels[0] * _LIVE_UNET * self.element_bytes
        attended = [i for i, kind in enumerate(c.get("down_block_types", ())) if "Attn" in kind]
        if not attended:
            return first
        level = attended[0]
        attention = batch * (latent // 4**level) * channels[level] * _LIVE_BLOCK * self.element_bytes
        return max(first, attention)

    def _decode_bytes(self, width: int, height: int) -> int:
        channels = list(self.vae.get("block_out_channels", (128,)))  # the last level's input is upsampled
        element = 4 if self.vae.get("force_upcast") else self.element_bytes
        return width * height * max(channels[:2]) * _LIVE_DECODER * element


def check_size(job: JobSpec, native: tuple[int, int], footprint: Footprint | None, budget: Budget) -> None:
    """Raise SpecError naming the size when `job` is too large to render. `native` is the model's
    default size; `footprint` is None where the model's configs are not here to estimate from."""
    width, height, step = job.width, job.height, 16 if footprint and footprint.family == "flux" else 8
    limit = AREA_LIMIT * native[0] * native[1]
    if width * height > limit:
        fits = _largest(width, height, step, lambda w, h: w * h <= limit)
        raise SpecError("size", f"{width}x{height} is {width * height / (native[0] * native[1]):,.0f} times "
                                f"the area model {job.model!r} is made for ({native[0]}x{native[1]}); at most "
                                f"{AREA_LIMIT} times is rendered: try {fits} or smaller")
    if footprint is None or footprint.weights_gb >= budget.gb:
        return  # weights alone past the budget: offloaded, or evicting others; the worker reports its own OOM
    need = footprint.total_gb(width, height)
    if need > budget.gb:
        fits = _largest(width, height, step, lambda w, h: footprint.total_gb(w, h) <= budget.gb)
        raise SpecError("size", f"{width}x{height} needs about {_gb(need)} on {job.model!r} (estimate: "
                                f"{_gb(footprint.weights_gb)} of weights and the largest activations) and "
                                f"the memory budget is {_gb(budget.gb)} of {budget.where}: try {fits} or smaller")


def _largest(width: int, height: int, step: int, fits: Callable[[int, int], bool]) -> str:
    """The largest size of about the same shape that `fits`, each side a multiple of `step`."""
    for w in range(width // step * step, step - 1, -step):
        h = max(step, round(w * height / width / step) * step)
        if fits(w, h):
            return f"{w}x{h}"
    return f"{step}x{step}"


def _gb(value: float) -> str:
    return f"{value:,.1f} GB" if value >= 10 else f"{value:.2f} GB"


def _config(folder: Path, component: str) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / component / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def element_bytes(dtype: str, on_gpu: bool) -> int:
    """Bytes per weight as the worker will load them: half precision on a GPU unless told."""
    if dtype == "auto":
        return 2 if on_gpu else 4
    return 4 if dtype == "float32" else 2
