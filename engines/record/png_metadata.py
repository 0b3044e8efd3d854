"""PNG text chunks: `parameters` in the AUTOMATIC1111 shape, `diffdeck` with the full record.

The A1111 shape is what sd-parsers, A1111's "PNG Info", Civitai and most galleries read:

    <prompt>
    Negative prompt: <negative>
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, ...

Values that contain ',', ':' or '"' are JSON-quoted, as A1111 does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from diffdeck.engines import __version__
from diffdeck.engines.core.jsontext import parse_json
from diffdeck.engines.core.spec import MAX_SIDE, JobSpec, SpecError
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


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if re.search(r'[,:"]', text) else text


def a1111_parameters(record: dict[str, Any]) -> str:
    """The `parameters` text of one image from its diffdeck record."""
    spec, model = record["spec"], record["model"]
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
    if model.get("revision"):
        fields.append(("Model hash", model["revision"][:10]))
    fields += [("Model", model["name"]), ("Version", f"diffdeck {__version__}")]
    lines = [spec["prompt"]]
    if spec["negative_prompt"]:
        lines.append(f"Negative prompt: {spec['negative_prompt']}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields))
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:g}"


def png_info(record: dict[str, Any]) -> PngInfo:
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(record))
    info.add_text(RECORD_KEY, json.dumps(record, sort_keys=True))
    return info


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
    """The job that renders this one image again, alone: its spec with its own seed."""
    record = read_record(path)
    try:
        seed = record["seed"]
        job = JobSpec.from_dict({**record["spec"], "count": 1, "seed": seed, "seeds": [seed]})
        job.validate()
        return job
    except (KeyError, TypeError) as e:
        raise MetadataError(f"{path}: its diffdeck record is incomplete ({e})") from None
    except SpecError as e:
        raise MetadataError(f"{path}: its diffdeck record holds a job that cannot run ({e})") from None


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
