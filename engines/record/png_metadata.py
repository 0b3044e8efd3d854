"""PNG text chunks: `parameters` in the AUTOMATIC1111 shape, `diffdeck` with the full record.

The A1111 shape is what sd-parsers, A1111's "PNG Info", Civitai and most galleries read:

    <prompt>
    Negative prompt: <negative>
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, ...

Values that contain ',', ':' or '"' are JSON-quoted, as A1111 does. A flow's image says what A1111
says of its own img2img, hires fix and refiner (Denoising strength, Hires upscale, Hires steps,
Hires upscaler, Hires checkpoint, Refiner, Refiner switch at) for the stages up to it, and its LoRAs as A1111's
prompt does, <lora:NAME:WEIGHT>, with their `Lora hashes`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from diffdeck.engines import __version__
from diffdeck.engines.core.flows import Lora
from diffdeck.engines.core.jsontext import parse_json
from diffdeck.engines.core.spec import MAX_SIDE, JobSpec, SpecError
from PIL import Image
from PIL.PngImagePlugin import PngImageFile, PngInfo

PARAMETERS_KEY = "parameters"
RECORD_KEY = "diffdeck"

# diffusers scheduler class -> A1111 sampler name
SAMPLER_NAMES = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "HeunDiscreteScheduler": "Heun",
    "LMSDiscreteScheduler": "LMS",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "UniPCMultistepScheduler": "UniPC",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DPMSolverSinglestepScheduler": "DPM++ SDE",
    "FlowMatchEulerDiscreteScheduler": "Euler",
    "FlowMatchHeunDiscreteScheduler": "Heun",
}

# upscale method -> A1111 upscaler name (its latent upscalers are named by their interpolation)
UPSCALER_NAMES = {"latent": "Latent (nearest-exact)", "lanczos": "Lanczos", "bicubic": "Bicubic", "nearest": "Nearest"}


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if re.search(r'[,:"]', text) else text


def a1111_parameters(record: dict[str, Any]) -> str:
    """The `parameters` text of one image from its diffdeck record."""
    if record.get("hosted") is not None:
        return _hosted_parameters(record)
    spec, model = record["spec"], record["model"]
    stages = spec.get("stages") or []
    if "stage" in record:  # a stage image: what the stages up to it did
        stages = stages[: record["stage"] + 1]
    scheduler = model["scheduler"]
    fields: list[tuple[str, Any]] = [
        ("Steps", spec["steps"]),
        ("Sampler", SAMPLER_NAMES.get(scheduler["class"], scheduler["class"])),
    ]
    if scheduler["config"].get("use_karras_sigmas"):
        fields.append(("Schedule type", "Karras"))
    fields += [
        ("CFG scale", _number(spec["guidance"])),
        ("Seed", record["seed"]),
        ("Size", f"{spec['width']}x{spec['height']}"),
    ]
    base = (stages[0].get("model") if stages else None) or spec["model"]  # the first pass's checkpoint
    if model.get("revision") and model["name"] == base:  # a refiner's image: Model is the base's
        fields.append(("Model hash", model["revision"][:10]))
    loras = _loras(spec, stages)
    fields += [("Model", base), *_flow_fields(stages, base)]
    if any(lora.sha256 for lora in loras):
        fields.append(("Lora hashes", ", ".join(f"{lora.name}: {lora.sha256[:12]}" for lora in loras if lora.sha256)))
    prompt = " ".join([spec["prompt"], *(f"<lora:{lora.name}:{_number(lora.weight)}>" for lora in loras)])
    return _text(prompt, spec["negative_prompt"], fields)


def _hosted_parameters(record: dict[str, Any]) -> str:
    """A hosted image's: no steps, sampler or CFG scale; the size it came back at, and the seed
    where one was sent."""
    hosted, model = record["hosted"], record["model"]
    returned = hosted["returned"]
    fields: list[tuple[str, Any]] = [("Size", f"{returned['width']}x{returned['height']}")]
    if hosted["seed_sent"] is not None:
        fields.append(("Seed", hosted["seed_sent"]))
    fields += [("Model", model["source"]), ("Provider", model["provider"])]
    return _text(record["spec"]["prompt"], record["spec"]["negative_prompt"], fields)


def _text(prompt: str, negative: str, fields: list[tuple[str, Any]]) -> str:
    lines = [prompt, *([f"Negative prompt: {negative}"] if negative else [])]
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in [*fields, ("Version", f"diffdeck {__version__}")]))
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:g}"


def _flow_fields(stages: list[dict[str, Any]], base: str) -> list[tuple[str, Any]]:
    """A1111's words for what the stages did: the last re-noising strength, the first upscale
    (its hires fix), the first refine. A second pass on another checkpoint than `base` is A1111's
    `Hires checkpoint` (1.6+): that of the first upscale, else of the first img2img after the
    first stage (A1111's hires fix is that pass; it has no other word for one)."""
    fields: list[tuple[str, Any]] = []
    strength = next((s["strength"] for s in reversed(stages) if s.get("strength") is not None), None)
    if strength is not None:
        fields.append(("Denoising strength", _number(strength)))
    upscale = next((s for s in stages if s["kind"] == "upscale"), None)
    if upscale:
        method = upscale.get("method") or "lanczos"
        fields += [("Hires upscale", _number(upscale["factor"])), ("Hires steps", upscale["steps"]),
                   ("Hires upscaler", UPSCALER_NAMES.get(method, method))]
    second = upscale or next((s for s in stages[1:] if s["kind"] == "img2img"), None)
    if second and (second.get("model") or base) != base:
        fields.append(("Hires checkpoint", second["model"]))
    refine = next((s for s in stages if s["kind"] == "refine"), None)
    if refine:
        fields += [("Refiner", refine["model"]), ("Refiner switch at", _number(refine["switch"]))]
    return fields


def _loras(spec: dict[str, Any], stages: list[dict[str, Any]]) -> list[Lora]:
    """The adapters the image was rendered with, each (file, weight) once: its stages', or the job's."""
    given = [x for stage in stages for x in stage.get("loras") or ()] if stages else spec.get("loras") or []
    unique: dict[tuple[str, float], Lora] = {}
    for lora in map(Lora.from_dict, given):
        unique.setdefault((lora.source, lora.weight), lora)
    return list(unique.values())


def png_info(record: dict[str, Any]) -> PngInfo:
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(record))
    info.add_text(RECORD_KEY, json.dumps(record, sort_keys=True))
    return info


def save_png(image: Image.Image, record: dict[str, Any], path: Path) -> None:
    """`image` with its record, written atomically: a kill mid-write never leaves a truncated PNG
    under the final name."""
    partial = path.with_name(path.name + ".part")
    image.save(partial, format="PNG", pnginfo=png_info(record))
    os.replace(partial, path)


class MetadataError(ValueError):
    """An image without a readable diffdeck record."""


def read_record(path: str | Path) -> dict[str, Any]:
    """The diffdeck record stored in a PNG written by diffdeck."""
    text = _png_text(path).get(RECORD_KEY)
    if text is None:
        raise MetadataError(f"{path} has no diffdeck record; was it made by diffdeck?")
    try:
        return parse_json(text)
    except ValueError as e:
        raise MetadataError(f"{path}: its diffdeck record is not valid JSON ({e})") from None


def _png_text(path: str | Path) -> dict[str, str]:
    """A PNG's text chunks. Some come after the pixels, which PIL decodes to reach them: a file
    that claims more pixels than diffdeck ever makes is refused before that, and so is one that
    is not a PNG, is broken, or holds text past PIL's limits (zTXt that inflates, say)."""
    try:
        with PngImageFile(path) as image:  # PNG alone; the size check is this one, not PIL's warning
            if image.width * image.height <= MAX_SIDE * MAX_SIDE:
                return dict(image.text)
            problem = f"it claims {image.width}x{image.height} pixels, more than a diffdeck image has"
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's words for a broken PNG
        problem = str(e)
    raise MetadataError(f"{path} is not a readable image ({problem})")


def image_job(path: str | Path) -> JobSpec:
    """The job that renders this one image again, alone: its spec with its own seed. A flow's
    stage image: its flow up to that stage, which ends with that image."""
    record = read_record(path)
    try:
        seed = record["seed"]
        spec = record["spec"] if record.get("stage") is None else _through_stage(record, path)
        job = JobSpec.from_dict({**spec, "count": 1, "seed": seed, "seeds": [seed]})
        job.validate()
        return job
    except (KeyError, TypeError) as e:
        raise MetadataError(f"{path}: its diffdeck record is incomplete ({e})") from None
    except SpecError as e:
        raise MetadataError(f"{path}: its diffdeck record holds a job that cannot run ({e})") from None


def _through_stage(record: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The spec of a stage image's flow cut after that stage. Refused for a stage a refine takes
    over part-way: its image is the schedule's part before the switch, which no flow ends with."""
    stages, stage = record["spec"]["stages"], record["stage"]
    if not isinstance(stage, int) or not 0 <= stage < len(stages):
        raise MetadataError(f"{path}: its diffdeck record names stage {stage!r} of a flow of {len(stages)} stages")
    if stage + 1 < len(stages) and stages[stage + 1]["kind"] == "refine":
        raise MetadataError(f"{path} is stage {stage} of its flow, stopped at the switch for the refine after it, "
                            "and renders only with that refine; render --from the flow's own image")
    return {**record["spec"], "stages": stages[:stage + 1]}


_FIELD = re.compile(r'\s*(\w[\w \-/]*): ("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse an A1111 `parameters` text the way A1111's own parser does (for round trips)."""
    *prompt_lines, last = text.rstrip("\n").split("\n")
    if len(_FIELD.findall(last)) < 3:  # no settings line: the whole text is the prompt
        prompt_lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in prompt_lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _FIELD.findall(last):
        result[key] = json.loads(value) if value.startswith('"') else value
    return result
