"""A job's route and flow at submit: the route chosen and applied, the flow's stages copied and
every field of each stage resolved, and a flow that cannot work refused with the reason, before
anything is queued (SpecError naming the stage or field, RegistryError for a model).

Refused: a stage of an unknown model; a refine after a model of another latent space (family,
VAE latent channels, VAE scaling factor) or of a family whose pipelines cannot hand over latents
part-way through the schedule (SDXL only); a latent upscale from another latent space; a LoRA
file that is missing, not safetensors, holds no LoRA weights, or has layers the model lacks or
of other widths (lora_fit); an upscale past MAX_SIDE, or past the memory estimate without `tile`;
a flow starting with img2img without an init image; a plain job or a txt2img stage on an
image-to-image model (a refiner: it finishes other stages' images, it starts none).

UI side: reads models' JSON configs and safetensors headers (LoRAs', models'), never torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from diffdeck.engines.core.budgets import usd
from diffdeck.engines.core.flows import Flow, Lora, Stage, prompt_loras
from diffdeck.engines.core.lora_fit import LoraFileError, json_object, lora_fit, once_per_file
from diffdeck.engines.core.registry import BUILT_IN_LORAS, Registry, RegistryError, hub_cache_dir
from diffdeck.engines.core.routes import capped, choose_route
from diffdeck.engines.core.spec import DEFAULT_SCHEDULER, FAMILY_NAMES, MAX_SIDE, JobSpec, check_scheduler
from diffdeck.engines.core.validation import SpecError, check

# Rough seconds a step at the default size, per family, for a model without `seconds_per_step`
# (a recent GPU, half precision): enough to tell a preview from a final.
FAMILY_STEP_S = {"sd": 0.05, "sdxl": 0.15, "sd3": 0.3, "flux": 0.6}
HOSTED_IMAGE_S = 10.0  # as rough: a hosted model's answer, an image, steps or none
REFINING_FAMILIES = ("sdxl",)  # pipelines with denoising_end / denoising_start

SizeCheck = Callable[[JobSpec], None]  # raises SpecError when job.model cannot render job.width x height


def resolve_flow(spec: JobSpec, registry: Registry, check_size: SizeCheck | None = None) -> JobSpec:
    """`spec` routed, its flow's stages copied and resolved, its LoRAs checked and hashed. A job
    with stages takes the first stage's model, steps, guidance, scheduler and size as its own.
    Idempotent: a resolved spec (a replay, a restored job) comes back as it is, re-checked."""
    prompt, tagged = prompt_loras(spec.prompt)  # <lora:NAME:W> in the prompt, as A1111 takes them
    if tagged:
        spec = replace(spec, prompt=prompt, loras=spec.loras + tagged)
    spec.validate()
    job = _checked_init(expand(spec, registry))
    return _resolved(job, registry, check_size)


def _resolved(job: JobSpec, registry: Registry, check_size: SizeCheck | None) -> JobSpec:
    """An expanded job's stages resolved and checked, its LoRAs hashed (its init image aside)."""
    if not job.stages:
        _check_starts(job.model, registry, "model")
        return replace(job, loras=_checked_loras(job.loras, job.model, registry, "loras"))
    Flow(job.flow or "stages", job.stages).validate()
    for i, stage in enumerate(job.stages):
        model = stage.model or job.model
        check(model not in registry.models or not registry.get(model).hosted, f"stages[{i}]",
              f"{model!r} is a hosted model: its provider renders a prompt in one request, never a flow's stage")
    stages: list[Stage] = []
    for i, stage in enumerate(job.stages):
        stage = _resolved_stage(job, i, stage, stages[-1] if stages else None, registry)
        stages.append(replace(stage, loras=_checked_loras(stage.loras, stage.model, registry, f"stages[{i}].loras")))
        _check_stage(job, i, stages, registry, check_size)
    first = stages[0]
    return replace(job, model=first.model, steps=first.steps, guidance=first.guidance, scheduler=first.scheduler,
                   width=first.width, height=first.height, stages=tuple(stages),
                   loras=_checked_loras(job.loras, first.model, registry, "loras") if job.loras else ())


def route_job(spec: JobSpec, registry: Registry, max_cost_s: float | None = None, max_cost_usd: float | None = None,
              price: Callable[[JobSpec], float | None] | None = None) -> JobSpec:
    """The route a job asks for (a name, or `auto`) chosen and applied: its flow, or its model and
    the job fields it gives that the job leaves open; `routed_by` says which rule chose it and
    why. With `max_cost_s`, the preview route when the chosen one's estimate is over it. The same
    for `max_cost_usd`, else the chosen route's own `max_cost_usd:`, at `price` (a job's estimated
    dollars, None where not known: diffdeck.engines.hosted.estimate); without `price` the cost is
    not known, so a money cap takes the preview route (never ignored). A job already routed
    (`routed_by` set), or asking for none, comes back as it is. A job naming an unknown model is
    refused, even where its route or flow would render on another."""
    registry.get(spec.model)
    if spec.route is None:
        check(max_cost_s is None and max_cost_usd is None, "max_cost",
              "caps the cost of a route; give a route (final, or auto) with it")
    if spec.route is None or spec.routed_by is not None:
        return spec
    name, why = choose_route(spec.prompt, registry.routes, spec.route)
    if max_cost_s is not None:
        name, why = capped(name, why, estimate_seconds(_applied(spec, registry, name, why), registry), max_cost_s)
    cap_usd = max_cost_usd if max_cost_usd is not None else registry.routes[name].max_cost_usd
    if cap_usd is not None:
        name, why = capped(name, why, price and price(_applied(spec, registry, name, why)), cap_usd, usd)
    return _applied(spec, registry, name, why)


def expand(spec: JobSpec, registry: Registry) -> JobSpec:
    """`spec` routed, with its flow's stages copied in (as the flow writes them, not yet resolved).
    The job's model is its first stage's, and so the model of every stage that names none."""
    job = route_job(spec, registry)
    if job.flow is not None and not job.stages:
        job = replace(job, stages=registry.flow(job.flow).stages)
    if job.stages and job.stages[0].model:
        job = replace(job, model=job.stages[0].model)
    return job


def overriding(spec: JobSpec, registry: Registry, field: str, given: Any) -> str | None:
    """What sets the job's `field` (model, steps, guidance, scheduler, loras) everywhere it renders,
    so that the value `given` for it would not be used, in words; None where it is used: a route or
    flow leaves it to the job in some stage (a stage that names no steps takes the job's), or the
    job has neither. `spec`: the job with `given` in it."""
    job = expand(spec, registry)
    by = (f"flow {job.flow}" + (f" of route {job.route}" if job.route else "")) if job.flow else f"route {job.route}"
    if field == "model":
        return None if job.model == given else f"{by} renders on model {job.model}"
    if not job.stages or any(getattr(stage, field) is None and (field == "loras" or stage.model in (None, job.model))
                             for stage in job.stages):  # a stage's LoRAs are the job's on any model
        return None
    values = [getattr(stage, field) for stage in job.stages if stage.model in (None, job.model)]
    said = ", ".join(dict.fromkeys(str(v) for v in values if v is not None and field != "loras"))
    return f"{by} sets {field} in every stage" + (f" ({said})" if said else "")


def estimate_seconds(spec: JobSpec, registry: Registry) -> float:
    """A rough render time: each stage's denoising steps (img2img: the part `strength` re-noises;
    a refine hand-over: each side's share) at the model's speed, scaled by the area against the
    model's default size. No file is read beyond the models' own index."""
    job = expand(spec, registry)
    if registry.get(job.model).hosted:  # no steps, nor a flow's stages
        return HOSTED_IMAGE_S * job.count
    stages: list[Stage] = []
    for i, stage in enumerate(job.stages or (Stage("txt2img"),)):
        stages.append(_resolved_stage(job, i, stage, stages[-1] if stages else None, registry))
    total = 0.0
    for i, stage in enumerate(stages):
        share = stage.strength if stage.strength is not None else 1.0
        if stage.kind == "refine":
            share = 1 - stage.switch
        elif i + 1 < len(stages) and stages[i + 1].kind == "refine":
            share *= stages[i + 1].switch
        family = registry.files(stage.model).family
        defaults = registry.defaults(stage.model, family)
        step_s = registry.get(stage.model).seconds_per_step or FAMILY_STEP_S.get(family or "sd", 0.05)
        area = stage.width * stage.height / (defaults["width"] * defaults["height"])
        total += stage.steps * share * step_s * area
    return total * job.count


def flow_problem(name: str, registry: Registry) -> str | None:
    """Why the flow cannot render as it is written (for `diffdeck flows`), or None. A flow that
    starts with img2img is checked as a promoted image would be, without one."""
    try:
        _resolved(expand(JobSpec(prompt="check", flow=name), registry), registry, None)
    except (SpecError, RegistryError) as e:
        return str(e)
    return None


# one stage

def _resolved_stage(job: JobSpec, i: int, stage: Stage, before: Stage | None, registry: Registry) -> Stage:
    """Every field the stage leaves open: the job's (the same model), else that model's default."""
    model = stage.model or job.model
    try:
        files = registry.files(model)
    except RegistryError as e:
        raise RegistryError(f"stages[{i}] ({stage.kind}): {e}") from None
    if files.problem:
        raise RegistryError(f"stages[{i}] ({stage.kind}): {files.problem}")
    family = files.family
    defaults = registry.defaults(model, family)
    own = model == job.model

    def pick(name: str) -> Any:
        value = getattr(stage, name)
        if value is None and own:
            value = getattr(job, name)
        return defaults[name] if value is None else value

    scheduler = stage.scheduler or (job.scheduler if own else "default")
    try:
        check_scheduler(scheduler, family)
    except SpecError as e:
        raise SpecError(f"stages[{i}].scheduler", e.message) from None
    width, height = _stage_size(job, stage, before, defaults)
    return replace(stage, model=model, steps=pick("steps"), guidance=pick("guidance"), scheduler=scheduler,
                   loras=job.loras if stage.loras is None else stage.loras, width=width, height=height,
                   method=stage.method or ("lanczos" if stage.kind == "upscale" else None))


def _stage_size(job: JobSpec, stage: Stage, before: Stage | None, defaults: dict[str, Any]) -> tuple[int, int]:
    if stage.kind in ("txt2img",) or before is None:
        return job.width or defaults["width"], job.height or defaults["height"]
    if stage.kind == "upscale":
        return _multiple_of_8(before.width * stage.factor), _multiple_of_8(before.height * stage.factor)
    return before.width, before.height


def _checked_init(job: JobSpec) -> JobSpec:
    """The job with its init image checked, named by its absolute path (what a replay or resume
    from another folder, and the worker, read) and hashed; refused where it changed since then."""
    starts_from_image = bool(job.stages) and job.stages[0].kind == "img2img"
    if job.init_image is None:
        check(not starts_from_image, "init_image",
              "the flow starts with img2img, which needs an image to start from (--init IMAGE.png, or promote one)")
        return job
    check(starts_from_image, "init_image", "is used only by a flow whose first stage is img2img"
          + (f"; flow {job.flow} starts with {job.stages[0].kind}" if job.stages else "; this job has no flow"))
    try:
        with open(job.init_image, "rb") as f:
            is_png = f.read(8) == b"\x89PNG\r\n\x1a\n"
        digest = file_sha256(Path(job.init_image))
    except OSError as e:
        raise SpecError("init_image", f"{job.init_image} cannot be read: {e.strerror or e}") from None
    check(is_png, "init_image", f"{job.init_image} is not a PNG image")
    check(job.init_sha256 in (None, digest), "init_image",
          f"the init image {job.init_image} changed since it was recorded (its sha256 is now {digest[:12]}..., "
          f"recorded {str(job.init_sha256)[:12]}...); restore it to render the job as it was")
    return replace(job, init_image=str(Path(job.init_image).expanduser().absolute()), init_sha256=digest)


def _check_stage(job: JobSpec, i: int, stages: list[Stage], registry: Registry, check_size: SizeCheck | None) -> None:
    stage, before = stages[i], stages[i - 1] if i else None
    where = f"stages[{i}]"
    if stage.kind == "txt2img":
        _check_starts(stage.model, registry, f"{where}.model")
    if stage.kind == "refine":
        check(before.kind in ("txt2img", "img2img"), f"{where}.kind",
              f"a refine takes over a txt2img or img2img stage part-way; stage {i - 1} is {before.kind}")
        for model in (before.model, stage.model):
            family = registry.files(model).family
            check(family in (None, *REFINING_FAMILIES), f"{where}.kind",
                  f"a refine hands latents over part-way through the schedule (denoising_end, denoising_start), "
                  f"which only SDXL pipelines do; model {model!r} is {FAMILY_NAMES.get(family, family)}")
        _check_same_latents(before.model, stage.model, registry, where, "a refine")
    if stage.kind == "upscale":
        check(stage.width <= MAX_SIDE and stage.height <= MAX_SIDE, f"{where}.factor",
              f"upscales {before.width}x{before.height} to {stage.width}x{stage.height}, past {MAX_SIDE} pixels a "
              "side; use a smaller factor")
        if stage.method == "latent":
            check(stage.tile is None, f"{where}.tile", "a tiled upscale works on pixels; use method lanczos with tile")
            _check_same_latents(before.model, stage.model, registry, where, "a latent upscale")
    if check_size is not None:
        _check_stage_size(job, i, stage, check_size)


def _check_starts(model: str, registry: Registry, where: str) -> None:
    """`model` renders from a prompt alone: it is not an image-to-image pipeline (a refiner)."""
    files = registry.files(model) if model in registry.models else None
    if files is not None and files.image_to_image:
        raise SpecError(where, f"{model!r} is {files.note}")


def _check_stage_size(job: JobSpec, i: int, stage: Stage, check_size: SizeCheck) -> None:
    width, height = stage.width, stage.height
    if stage.tile is not None:
        width, height = min(width, stage.tile), min(height, stage.tile)
    try:
        check_size(replace(job, model=stage.model, width=width, height=height, stages=()))
    except SpecError as e:
        hint = "; give the stage a tile (for example tile: 512) to render it in tiles" \
            if stage.kind == "upscale" and stage.tile is None else ""
        raise SpecError(f"stages[{i}]", f"{stage.kind} at {e.message}{hint}") from None


def _check_same_latents(first: str, second: str, registry: Registry, where: str, what: str) -> None:
    spaces = {model: _latent_space(model, registry) for model in (first, second)}
    if None in spaces.values() or spaces[first] == spaces[second]:
        return  # a model not downloaded yet: its worker finds out
    said = {m: f"{FAMILY_NAMES.get(s[0], s[0])}, {s[1]} latent channels, scaling {s[2]:g}" for m, s in spaces.items()}
    raise SpecError(where, f"{what} needs the latent space of the stage before it: model {first!r} is "
                           f"{said[first]}, model {second!r} is {said[second]}")


def _latent_space(model: str, registry: Registry) -> tuple[str, int, float] | None:
    files = registry.files(model)
    vae = json_object(files.folder / "vae" / "config.json") if files.folder else None
    if vae is None or files.family is None:
        return None
    return files.family, vae.get("latent_channels", 4), vae.get("scaling_factor", 0.18215)


# LoRA files

def _checked_loras(loras: tuple[Lora, ...], model: str, registry: Registry, where: str) -> tuple[Lora, ...]:
    return tuple(_checked_lora(lora, model, registry, f"{where}[{i}]") for i, lora in enumerate(loras))


def _checked_lora(lora: Lora, model: str, registry: Registry, where: str) -> Lora:
    path = lora_file(lora.source)
    check(path is not None, where, f"{lora.source}: no such file, nor a downloaded hub adapter in {hub_cache_dir()}, "
                                   f"nor a built-in adapter ({', '.join(built_in_loras())})")
    check(path.suffix == ".safetensors", where,
          f"{lora.source} is not a .safetensors file; adapters are loaded as safetensors only (pickle files can run code)")
    folder = registry.files(model).folder
    try:
        misfit = lora_fit(path, folder, model) if folder is not None else None  # not downloaded: the worker checks
    except LoraFileError as e:
        raise SpecError(where, str(e)) from None
    check(misfit is None, where, misfit or "")
    digest = file_sha256(path)
    check(lora.sha256 in (None, digest), where,
          f"{path} has changed since it was recorded (sha256 {digest[:12]}..., recorded {str(lora.sha256)[:12]}...)")
    local = Path(lora.source).expanduser().exists()
    return replace(lora, source=str(path) if local else lora.source, sha256=digest)


def built_in_loras() -> list[str]:
    """The adapters that ship with diffdeck, by name (`--lora striped`): recorded by name, so a
    session that used one replays from any checkout."""
    return sorted(path.stem for path in BUILT_IN_LORAS.glob("*.safetensors"))


def lora_file(source: str) -> Path | None:
    """A LoRA's file: a local path, else a built-in adapter's name, else `org/repo[/file.safetensors]`
    in the hub cache (the repo's one .safetensors file when it names none). None when none is here."""
    local = Path(source).expanduser()
    if local.is_file():
        return local.absolute()
    if source in built_in_loras():
        return BUILT_IN_LORAS / f"{source}.safetensors"
    parts = source.split("/")
    if len(parts) < 2 or local.is_absolute():
        return None
    repo = hub_cache_dir() / f"models--{parts[0]}--{parts[1]}"
    ref = repo / "refs" / "main"
    snapshot = repo / "snapshots" / (ref.read_text().strip() if ref.is_file() else "main")
    if len(parts) > 2:
        named = snapshot.joinpath(*parts[2:])
        return named if named.is_file() else None
    found = sorted(snapshot.glob("*.safetensors")) if snapshot.is_dir() else []
    return found[0] if len(found) == 1 else None


def file_sha256(path: Path) -> str:
    """The file's SHA-256, hashed once per process for each version of it (path, size, mtime)."""
    return once_per_file(path, _sha256)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# routes

def _applied(spec: JobSpec, registry: Registry, name: str, why: str) -> JobSpec:
    route = registry.routes[name]
    if route.flow is not None:
        check(spec.flow in (None, route.flow), "flow",
              f"the job names flow {spec.flow!r} and route {name} names flow {route.flow!r}; give one of them")
    open_fields = {k: v for k, v in route.fields.items() if getattr(spec, k) in (None, (), "", DEFAULT_SCHEDULER)}
    moved = route.model is not None and route.model != spec.model
    return replace(spec, **open_fields, model=route.model or spec.model, flow=route.flow or spec.flow,
                   route=name, routed_by=f"{why}: {route.target()}", routed_from=spec.model if moved else spec.routed_from)


def _multiple_of_8(value: float) -> int:
    return max(8, round(value / 8) * 8)
