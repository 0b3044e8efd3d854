"""Validated descriptions of what to render (JobSpec) and with what (ModelSpec).

Pure data: no torch here. Every validation error names the field that is wrong and
what a valid value looks like, so the CLI and the TUI can show it as it is.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

from diffdeck.engines.core.flows import MAX_LORAS, MAX_STAGES, Lora, Stage, loras_from, stages_from
from diffdeck.engines.core.validation import MAX_STEPS, SpecError, check, is_int, is_number

FAMILY_NAMES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL", "sd3": "SD3/3.5", "flux": "Flux.1"}
OFFLOAD_MODES = ("none", "model", "sequential")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N, one GPU of several (its position among the visible ones)
MAX_SIDE = 4096
MAX_COUNT = 64
MAX_PROMPT = 10_000  # characters; T5 in SD3 and Flux reads 512 tokens, CLIP 77: this is ample
SEED_RANGE = 2**32
DRAWN_SEEDS = 2**31  # a seed drawn at submit is below this: within every provider's range (Ideogram's ends at 2**31 - 1)
# Hosted models: a provider's API renders them (diffdeck.engines.hosted); "diffusers": a local pipeline.
LOCAL_KIND = "diffusers"
HOSTED_KINDS = ("ideogram", "imagen", "gemini", "openai")

# Short scheduler names. Each maps to a diffusers class and the config overrides it needs.
# Families whose models predict noise (eps/v) take the first group; flow-matching models
# (SD3, Flux) only take flow-matching schedulers.
_EPS_FAMILIES = ("sd", "sdxl")
_FLOW_FAMILIES = ("sd3", "flux")
SCHEDULERS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "euler": ("EulerDiscreteScheduler", {}, _EPS_FAMILIES),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, _EPS_FAMILIES),
    "heun": ("HeunDiscreteScheduler", {}, _EPS_FAMILIES),
    "lms": ("LMSDiscreteScheduler", {}, _EPS_FAMILIES),
    "ddim": ("DDIMScheduler", {}, _EPS_FAMILIES),
    "pndm": ("PNDMScheduler", {}, _EPS_FAMILIES),
    "unipc": ("UniPCMultistepScheduler", {}, _EPS_FAMILIES),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, _EPS_FAMILIES),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, _EPS_FAMILIES),
    "dpmpp_sde": ("DPMSolverSinglestepScheduler", {}, _EPS_FAMILIES),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}, _FLOW_FAMILIES),
    "flow_heun": ("FlowMatchHeunDiscreteScheduler", {}, ("sd3",)),  # Flux passes sigmas it cannot take
}
DEFAULT_SCHEDULER = "default"  # keep the scheduler the model ships with


def parse_size(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768); 'WxH' is width first, as in AUTOMATIC1111."""
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isascii() and p.isdecimal() for p in parts):
        raise SpecError("size", f"{text!r} is not WIDTHxHEIGHT, for example 512x512")
    if any(len(p) > 9 for p in parts):  # no side is near this long, and int() refuses thousands of digits
        raise SpecError("size", f"a side of {max(map(len, parts))} digits is more than {MAX_SIDE} pixels")
    return int(parts[0]), int(parts[1])


def draw_seeds(first: int | None, count: int) -> tuple[int, ...]:
    """Image i uses first + i; a missing first seed is drawn now, so it is recorded."""
    if first is None:
        first = random.randrange(DRAWN_SEEDS - count)
    return tuple((first + i) % SEED_RANGE for i in range(count))


def check_scheduler(name: str, family: str | None) -> None:
    if name == DEFAULT_SCHEDULER:
        return
    if name not in SCHEDULERS:
        known = ", ".join([DEFAULT_SCHEDULER, *SCHEDULERS])
        raise SpecError("scheduler", f"unknown scheduler {name!r}; known: {known}")
    allowed = SCHEDULERS[name][2]
    if family is not None and family not in allowed:
        fits = ", ".join(n for n, (_, _, fams) in SCHEDULERS.items() if family in fams)
        raise SpecError(
            "scheduler",
            f"{name!r} does not work with {FAMILY_NAMES[family]} models; use one of: "
            f"{DEFAULT_SCHEDULER}, {fits}",
        )


@dataclass(frozen=True)
class JobSpec:
    """One render request: ``count`` images of one prompt, each with its own seed."""

    prompt: str
    model: str = "demo"
    negative_prompt: str = ""
    seed: int | None = None  # first seed; image i uses seed + i. None: drawn at submit
    seeds: tuple[int, ...] | None = None  # explicit per-image seeds (replay, grids)
    steps: int | None = None  # None: the model's default
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    scheduler: str = DEFAULT_SCHEDULER
    count: int = 1
    group: str | None = None  # A/B set or grid cell this job belongs to
    loras: tuple[Lora, ...] = ()  # adapters for every stage that names none of its own
    init_image: str | None = None  # a PNG: the init of a flow that starts with img2img (a promoted preview)
    init_sha256: str | None = None  # the init image file's, filled in at submit: a changed file is refused
    flow: str | None = None  # the flow's name; its stages are copied into `stages` at submit
    stages: tuple[Stage, ...] = ()  # empty: one txt2img pass, as a job without a flow
    route: str | None = None  # the intent it was rendered for (preview, final, ...)
    routed_by: str | None = None  # which rule chose the route, and why
    routed_from: str | None = None  # the model the job named, where its route renders on another

    def validate(self) -> None:
        check(isinstance(self.prompt, str), "prompt", "must be text")
        check(self.prompt.strip() != "", "prompt", "is empty; describe the image to render")
        check(isinstance(self.negative_prompt, str), "negative_prompt", "must be text")
        for name, text in (("prompt", self.prompt), ("negative_prompt", self.negative_prompt)):
            check(len(text) <= MAX_PROMPT, name, f"is {len(text):,} characters long; at most {MAX_PROMPT:,} are taken")
            check("\x00" not in text, name, "contains a NUL character")
            bad = _undecodable_at(text)
            check(bad is None, name, f"is not valid UTF-8: an undecodable byte at character {bad}; "
                   "check the encoding of your terminal (locale) or prompt file")
        check(isinstance(self.model, str), "model", f"must be a model's name, not a {type(self.model).__name__}")
        check(bool(self.model), "model", "is empty; name a model from `diffdeck models`")
        check(is_int(self.count) and 1 <= self.count <= MAX_COUNT, "count",
               f"must be a whole number from 1 to {MAX_COUNT}, got {self.count!r}")
        if self.seed is not None:
            check(is_int(self.seed) and 0 <= self.seed < SEED_RANGE, "seed",
                   f"must be a whole number from 0 to {SEED_RANGE - 1}, got {self.seed!r}")
        if self.seeds is not None:
            check(len(self.seeds) == self.count, "seeds",
                   f"gives {len(self.seeds)} seeds for a count of {self.count}")
            for s in self.seeds:
                check(is_int(s) and 0 <= s < SEED_RANGE, "seeds", f"{s!r} is not a valid seed")
        if self.steps is not None:
            check(is_int(self.steps) and 1 <= self.steps <= MAX_STEPS, "steps",
                   f"must be a whole number from 1 to {MAX_STEPS}, got {self.steps!r}")
        if self.guidance is not None:
            check(is_number(self.guidance) and 0 <= self.guidance <= 50,
                   "guidance", f"must be a number from 0 to 50, got {self.guidance!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is None:
                continue
            check(is_int(value) and 8 <= value <= MAX_SIDE, name,
                   f"must be from 8 to {MAX_SIDE} pixels, got {value!r}")
            check(value % 8 == 0, name,
                   f"{value} is not a multiple of 8; try {max(8, value // 8 * 8)} or {value // 8 * 8 + 8}")
        check_scheduler(self.scheduler, None)
        check(len(self.loras) <= MAX_LORAS, "loras", f"at most {MAX_LORAS} adapters, got {len(self.loras)}")
        for i, lora in enumerate(self.loras):
            lora.validate(f"loras[{i}]")
        check(len(self.stages) <= MAX_STAGES, "stages", f"a flow has at most {MAX_STAGES} stages, got {len(self.stages)}")
        for i, stage in enumerate(self.stages):
            stage.validate(i)

    def resolved(self, defaults: dict[str, Any], family: str | None, seeds: tuple[int, ...]) -> "JobSpec":
        """This spec with the model's defaults filled in and every seed fixed, re-validated."""
        filled = {k: v for k, v in defaults.items() if getattr(self, k, None) is None}
        job = dataclasses.replace(self, **filled, seeds=seeds, seed=seeds[0])
        job.validate()
        check_scheduler(job.scheduler, family)
        if family == "flux":
            check(job.negative_prompt == "", "negative_prompt",
                   "Flux models take no negative prompt; leave it empty")
            check(job.width % 16 == 0 and job.height % 16 == 0, "size",
                   "Flux models need a width and height that are multiples of 16")
        return job

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["seeds"] is not None:
            d["seeds"] = list(d["seeds"])
        d["loras"] = [lora.to_dict() for lora in self.loras]
        d["stages"] = [stage.to_dict() for stage in self.stages]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(unknown[0], f"is not a job field; fields are {', '.join(sorted(known))}")
        data = dict(data)
        if "prompt" not in data:
            raise SpecError("prompt", "is missing")
        if data.get("seeds") is not None:
            if not isinstance(data["seeds"], (list, tuple)):
                raise SpecError("seeds", f"must be a list of seeds, got {data['seeds']!r}")
            data["seeds"] = tuple(data["seeds"])
        data["loras"] = loras_from(data.get("loras") or ())
        data["stages"] = stages_from(data.get("stages") or ())
        return cls(**data)


@dataclass(frozen=True)
class ModelSpec:
    """One entry of models.yaml, as the worker needs it."""

    name: str
    source: str  # hub id ("org/name") or local folder
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    gpus: tuple[int, ...] | None = None  # the GPUs its workers may run on (None: any); device cuda:N pins one
    offload: str = "none"
    defaults: dict[str, Any] = field(default_factory=dict)
    memory_gb: float | None = None  # estimate used by the dispatcher's memory budget
    seconds_per_step: float | None = None  # at its default size, here: what a route's cost is estimated from
    roles: tuple[str, ...] = ()
    description: str = ""
    example: str = ""  # a prompt the model draws well, shown where the prompt is typed
    allow_pickle: bool = False  # load .bin/.ckpt weights; off: they can run code on load
    # A hosted model (kind one of HOSTED_KINDS): `source` is the provider's model id.
    kind: str = LOCAL_KIND
    api_key_env: str | None = None  # the environment variable that holds the key; never a key in a file
    base_url: str | None = None  # the API's root (a proxy, a regional endpoint, a test's server); None: the provider's
    concurrency: int = 2  # requests in flight at once for this model
    price_usd: float | None = None  # per image; None: the provider's published price (diffdeck.engines.hosted.prices)
    timeout_s: float = 120.0  # one request's, before it is retried
    options: dict[str, Any] = field(default_factory=dict)  # the provider's own parameters (quality, style, ...)

    @property
    def hosted(self) -> bool:
        return self.kind != LOCAL_KIND

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["roles"] = list(self.roles)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        data = dict(data)
        data["roles"] = tuple(data.get("roles") or ())
        data["gpus"] = tuple(data["gpus"]) if data.get("gpus") is not None else None
        return cls(**data)


def _undecodable_at(text: str) -> int | None:
    """Bytes that were not UTF-8 reach Python as lone surrogates (surrogateescape)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.start
