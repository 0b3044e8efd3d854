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

from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from . import __version__
from .spec import JobSpec

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
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(RECORD_KEY)
    except (OSError, UnidentifiedImageError) as e:
        raise MetadataError(f"{path} is not a readable image ({e})") from None
    if text is None:
        raise MetadataError(f"{path} has no diffdeck record; was it made by diffdeck?")
    try:
        return json.loads(text)
    except ValueError:
        raise MetadataError(f"{path}: its diffdeck record is not valid JSON") from None


def image_job(path: str | Path) -> JobSpec:
    """The job that renders this one image again, alone: its spec with its own seed."""
    record = read_record(path)
    try:
        seed = record["seed"]
        return JobSpec.from_dict({**record["spec"], "count": 1, "seed": seed, "seeds": [seed]})
    except (KeyError, TypeError) as e:
        raise MetadataError(f"{path}: its diffdeck record is incomplete ({e})") from None


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
