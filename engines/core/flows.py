"""Flows: one job rendered in stages, each stage a pass of one model over the previous stage's
image (or, for `refine`, its latents part-way through the schedule).

    txt2img  the base render: what a job without stages does
    img2img  the previous stage's image (or the job's init image) as init, at `strength`
    refine   SDXL-style hand-over: the previous stage stops at `switch` (denoising_end) and this
             one, a model of the same latent space, denoises the rest (denoising_start)
    upscale  `factor` larger by `method` (latent, or a pixel resampler), then an img2img pass at
             `strength`; in tiles of `tile` pixels when the size is past what fits in memory

Every stage renders the job's seeds; a field a stage leaves out is the job's (or, for a stage of
another model, that model's default). Pure data: no torch, no files.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from diffdeck.engines.core.validation import MAX_STEPS, SpecError, check, is_int, is_number

STAGE_KINDS = ("txt2img", "img2img", "refine", "upscale")
UPSCALE_METHODS = ("latent", "lanczos", "bicubic", "nearest")
MAX_FACTOR = 4.0
MAX_STAGES = 8
MAX_LORAS = 8


@dataclass(frozen=True)
class Lora:
    """A LoRA adapter applied for one job: a .safetensors file, or `org/repo` (optionally
    `org/repo/file.safetensors`) in the hub cache. `sha256` is filled in at submit."""

    source: str
    weight: float = 1.0
    sha256: str | None = None

    @property
    def name(self) -> str:
        """What A1111 writes in the prompt: <lora:NAME:WEIGHT>."""
        return PurePath(self.source).stem if self.source.endswith(".safetensors") else PurePath(self.source).name

    def validate(self, where: str) -> None:
        check(isinstance(self.source, str) and self.source.strip() != "", f"{where}.source",
               "names a .safetensors file or a hub repository (org/name)")
        check(is_number(self.weight) and -4 <= self.weight <= 4, f"{where}.weight",
               f"must be a number from -4 to 4, got {self.weight!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "lora") -> "Lora":
        """From {source, weight[, sha256]} or the short form "FILE[:WEIGHT]"."""
        if isinstance(data, str):
            source, _, weight = data.rpartition(":") if _ends_in_number(data) else (data, "", "")
            return cls(source, float(weight) if weight else 1.0)
        if not isinstance(data, dict) or "source" not in data:
            raise SpecError(where, f"expected {{source: FILE, weight: W}} or \"FILE:W\", got {data!r}")
        unknown = sorted(set(data) - {"source", "weight", "sha256"})
        check(not unknown, where, f"{unknown[0] if unknown else ''!r} is not a LoRA field; fields are source, weight")
        return cls(str(data["source"]), data.get("weight", 1.0), data.get("sha256"))


@dataclass(frozen=True)
class Stage:
    """One pass of a flow. None: the job's value, or (for a stage of another model) that model's."""

    kind: str
    model: str | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    strength: float | None = None  # img2img, upscale: how much of the init is re-noised (0..1]
    factor: float | None = None  # upscale
    method: str | None = None  # upscale: latent, or a pixel resampler
    tile: int | None = None  # upscale: tile side in pixels; None: whole image
    switch: float | None = None  # refine: fraction of the schedule where this stage takes over
    loras: tuple[Lora, ...] | None = None  # None: the job's LoRAs; () none
    width: int | None = None  # filled at submit: the size this stage renders
    height: int | None = None

    def validate(self, index: int) -> None:
        where = f"stages[{index}]"
        check(self.kind in STAGE_KINDS, f"{where}.kind",
               f"unknown stage kind {self.kind!r}; kinds: {', '.join(STAGE_KINDS)}")
        if self.steps is not None:
            check(is_int(self.steps) and 1 <= self.steps <= MAX_STEPS, f"{where}.steps",
                   f"must be a whole number from 1 to {MAX_STEPS}, got {self.steps!r}")
        if self.guidance is not None:
            check(is_number(self.guidance) and 0 <= self.guidance <= 50, f"{where}.guidance",
                   f"must be a number from 0 to 50, got {self.guidance!r}")
        needs = {"img2img": ("strength",), "upscale": ("factor", "strength"), "refine": ("switch",), "txt2img": ()}
        takes = {"img2img": {"strength"}, "upscale": {"factor", "method", "tile", "strength"},
                 "refine": {"switch"}, "txt2img": set()}[self.kind]
        for name in ("strength", "factor", "method", "tile", "switch"):
            given = getattr(self, name) is not None
            check(not given or name in takes, f"{where}.{name}", f"does not apply to a {self.kind} stage")
            check(given or name not in needs[self.kind], f"{where}.{name}", f"is needed by a {self.kind} stage")
        if self.strength is not None:
            check(is_number(self.strength) and 0 < self.strength <= 1, f"{where}.strength",
                   f"must be a number above 0 and at most 1, got {self.strength!r}")
        if self.factor is not None:
            check(is_number(self.factor) and 1 < self.factor <= MAX_FACTOR, f"{where}.factor",
                   f"must be a number above 1 and at most {MAX_FACTOR:g}, got {self.factor!r}")
        if self.method is not None:
            check(self.method in UPSCALE_METHODS, f"{where}.method",
                   f"unknown method {self.method!r}; methods: {', '.join(UPSCALE_METHODS)}")
        if self.tile is not None:
            check(is_int(self.tile) and 64 <= self.tile <= 4096 and self.tile % 8 == 0, f"{where}.tile",
                   f"must be a multiple of 8 from 64 to 4096 pixels, got {self.tile!r}")
        if self.switch is not None:
            check(is_number(self.switch) and 0 < self.switch < 1, f"{where}.switch",
                   f"must be a fraction between 0 and 1 (0.8: the refiner does the last 20 %), got {self.switch!r}")
        if self.loras is not None:
            check(len(self.loras) <= MAX_LORAS, f"{where}.loras", f"at most {MAX_LORAS} adapters, got {len(self.loras)}")
            for i, lora in enumerate(self.loras):
                lora.validate(f"{where}.loras[{i}]")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["loras"] = None if self.loras is None else [lora.to_dict() for lora in self.loras]
        return {k: v for k, v in d.items() if v is not None or k == "kind"}

    @classmethod
    def from_dict(cls, data: Any, index: int = 0) -> "Stage":
        where = f"stages[{index}]"
        if not isinstance(data, dict):
            raise SpecError(where, f"expected a mapping with a kind, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        check(not unknown, f"{where}.{unknown[0] if unknown else ''}",
               f"is not a stage field; fields are {', '.join(sorted(known))}")
        check("kind" in data, f"{where}.kind", f"is missing; kinds: {', '.join(STAGE_KINDS)}")
        data = dict(data)
        if data.get("loras") is not None:
            check(isinstance(data["loras"], (list, tuple)), f"{where}.loras", "must be a list of adapters")
            data["loras"] = tuple(Lora.from_dict(x, f"{where}.loras[{i}]") for i, x in enumerate(data["loras"]))
        return cls(**data)


@dataclass(frozen=True)
class Flow:
    """A named list of stages, as `flows:` in models.yaml defines it."""

    name: str
    stages: tuple[Stage, ...]
    description: str = ""

    def validate(self) -> None:
        check(1 <= len(self.stages) <= MAX_STAGES, "stages", f"a flow has 1 to {MAX_STAGES} stages, got {len(self.stages)}")
        for i, stage in enumerate(self.stages):
            stage.validate(i)
        check(self.stages[0].kind in ("txt2img", "img2img"), "stages[0].kind",
               "a flow starts with txt2img, or img2img of a given image; refine and upscale need a stage before them")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "stages": [s.to_dict() for s in self.stages]}


# A LoRA named in the prompt as AUTOMATIC1111 writes it: <lora:NAME> or <lora:NAME:WEIGHT>
_LORA_TAG = re.compile(r"<lora:([^:<>]+?)(?::([-+]?(?:\d+\.?\d*|\.\d+)))?>")


def prompt_loras(prompt: str) -> tuple[str, tuple[Lora, ...]]:
    """The prompt without its `<lora:NAME:WEIGHT>` tags (the spaces they leave closed up), and the
    adapters they name, in order (weight 1 where none is given)."""
    loras = tuple(Lora(name.strip(), float(weight) if weight else 1.0) for name, weight in _LORA_TAG.findall(prompt))
    if not loras:
        return prompt, ()
    return re.sub(r"\s+([,;.])", r"\1", " ".join(_LORA_TAG.sub(" ", prompt).split())), loras


def denoising_steps(stages: tuple[Stage, ...]) -> list[int]:
    """The steps each stage of a resolved flow denoises for one image, as diffusers counts them: an
    img2img or upscale pass `strength` of its steps, a stage a refine takes over up to `switch`, the
    refine the rest. (Tiles each take the pass's steps again: not counted here.)"""
    counts = []
    for i, stage in enumerate(stages):
        steps = stage.steps or 0
        following = stages[i + 1] if i + 1 < len(stages) else None
        if stage.kind in ("img2img", "upscale"):
            steps = int(steps * (stage.strength or 1))
        elif stage.kind == "refine":
            steps -= round(steps * (stage.switch or 0))
        if following is not None and following.kind == "refine":
            steps = round(steps * (following.switch or 1))
        counts.append(max(steps, 0))
    return counts


def stages_from(data: Any) -> tuple[Stage, ...]:
    check(isinstance(data, (list, tuple)), "stages", f"must be a list of stages, got {data!r}")
    return tuple(s if isinstance(s, Stage) else Stage.from_dict(s, i) for i, s in enumerate(data))


def loras_from(data: Any) -> tuple[Lora, ...]:
    check(isinstance(data, (list, tuple)), "loras", f"must be a list of adapters, got {data!r}")
    return tuple(x if isinstance(x, Lora) else Lora.from_dict(x, f"loras[{i}]") for i, x in enumerate(data))


def _ends_in_number(text: str) -> bool:
    head, sep, tail = text.rpartition(":")
    if not sep or not head:
        return False
    try:
        float(tail)
    except ValueError:
        return False
    return True
