"""Whether a LoRA file fits a model, from the safetensors headers alone (no torch, no weights read).

Each of the LoRA's layers (a down and an up matrix) is mapped to the model's layer it adapts:
    peft       unet.down_blocks.1...attn2.to_k.lora_A.weight          (lora_B: the up matrix)
    diffusers  unet.down_blocks.1...attn2.to_k.lora.down.weight       (text encoders: lora_linear_layer)
               down_blocks.1...attn2.processor.to_k_lora.down.weight  (the older attention-processor form)
    kohya      lora_unet_down_blocks_1_..._attn2_to_k.lora_down.weight, lora_te_/te1_/te2_ for the text encoders
A layer fits when the model has it and its down matrix takes the model layer's inputs and its up
matrix gives its outputs. Keys named some other way (kohya's SDXL block names, LyCORIS) are left
for the worker to find out; a layer in a form read here that does not fit refuses the file.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from diffdeck.engines.core.text import counted

MAX_HEADER = 100_000_000  # bytes of safetensors JSON header; a real one is far smaller
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
_KOHYA = re.compile(r"^lora_(?P<part>unet|transformer|te[12]?)_(?P<flat>.+)\.lora_(?P<end>down|up)\.weight$")
# kohya's unet is the denoiser, a transformer in SD3 and Flux
_KOHYA_PARTS = {"unet": "", "transformer": "", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}
_PROCESSOR = re.compile(r"^(?P<module>.+)\.processor\.(?P<proj>to_[qkv]|to_out)_lora\.(?P<end>down|up)\.weight$")
_DOTTED = re.compile(r"^(?P<module>.+?)\.(?:lora_(?P<peft>[AB])(?:\.[^.]+)?|lora(?:_linear_layer)?\.(?P<end>down|up))"
                     r"\.weight$")
_ADAPTER_WORDS = re.compile(r"lora|hada_|lokr_", re.I)  # any adapter's keys, read here or not

T = TypeVar("T")
_per_file: dict[tuple[str, str, int, int], Any] = {}


class LoraFileError(Exception):
    """A file that is not a safetensors file, or cannot be read."""


def once_per_file(path: Path, compute: Callable[[Path], T]) -> T:
    """`compute(path)`, computed once per process for each version of the file (path, size, mtime)."""
    stat = path.stat()
    key = (compute.__qualname__, str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _per_file:
        _per_file[key] = compute(path)
    return _per_file[key]


def header(path: Path) -> dict[str, Any]:
    """A safetensors file's JSON header: tensor name -> {dtype, shape, data_offsets}."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < size <= MAX_HEADER:
                raise LoraFileError(f"{path} is not a safetensors file (no header)")
            data = json.loads(f.read(size))
    except OSError as e:
        raise LoraFileError(f"{path} cannot be read: {e.strerror or e}") from None
    except ValueError:
        raise LoraFileError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(data, dict):
        raise LoraFileError(f"{path} is not a safetensors file (its header is not a mapping)")
    return data


@dataclass(frozen=True)
class Layer:
    """One layer of a LoRA: the model layer it adapts, and its matrices' shapes."""

    component: str  # unet, transformer, text_encoder, ...
    module: str  # the layer's name in that component, dotted ("down_blocks.1....attn2.to_k"), or kohya's flat one
    flat: bool  # kohya: the name with every dot an underscore
    down: tuple[int, ...] | None = None  # [rank, inputs, ...]
    up: tuple[int, ...] | None = None  # [outputs, rank, ...]


def lora_fit(path: Path, model_folder: Path, model: str) -> str | None:
    """Why the LoRA in `path` cannot load into the model in `model_folder`, in one line; None when
    every layer read fits (or none can be read here). LoraFileError when it is no safetensors file."""
    try:
        adapter = once_per_file(path, _lora_layers)
    except OSError as e:  # gone since it was found
        raise LoraFileError(f"{path} cannot be read: {e.strerror or e}") from None
    if adapter is None:
        return f"{path.name} has no LoRA weights (its tensors adapt no layer); is it a model's weights file?"
    parts = _model_parts(model_folder)
    if not parts:
        return None  # no model index to read: the worker finds out
    misfits = [misfit for layer in adapter if (misfit := _misfit(layer, parts)) is not None]
    if not misfits:
        return None
    verb = "does" if len(misfits) == 1 else "do"
    return (f"{path.name} is not a LoRA for {model}: {len(misfits)} of its {counted(len(adapter), 'layer')} {verb} "
            f"not fit (first: {misfits[0]})")


def _lora_layers(path: Path) -> tuple[Layer, ...] | None:
    """The file's LoRA layers in name order; None when it holds no adapter weights at all."""
    matrices: dict[tuple[str, str, bool], dict[str, tuple[int, ...]]] = {}
    tensors = header(path)
    for name, entry in tensors.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        read = _lora_key(name)
        if read is None or not isinstance(shape, list) or len(shape) < 2 or not all(isinstance(n, int) for n in shape):
            continue
        component, module, flat, end = read
        matrices.setdefault((component, module, flat), {})[end] = tuple(shape)
    if not matrices and not any(_ADAPTER_WORDS.search(name) for name in tensors):
        return None
    return tuple(Layer(c, m, flat, ends.get("down"), ends.get("up")) for (c, m, flat), ends in sorted(matrices.items()))


def _lora_key(name: str) -> tuple[str, str, bool, str] | None:
    """(component, module, flat, "down" or "up") of a LoRA tensor's name; None for another tensor
    (a kohya alpha, a DoRA magnitude) or a form not read here."""
    if match := _KOHYA.match(name):
        part = match["part"]
        return _KOHYA_PARTS[part], match["flat"], True, match["end"]
    if match := _PROCESSOR.match(name):
        module, end = f"{match['module']}.{match['proj'].replace('to_out', 'to_out.0')}", match["end"]
    elif match := _DOTTED.match(name):
        module, end = match["module"], match["end"] or {"A": "down", "B": "up"}[match["peft"]]
    else:
        return None
    module = module.removeprefix("base_model.model.")
    component, _, rest = module.partition(".")
    if component in COMPONENTS and rest:
        return component, rest, False, end
    return "", module, False, end  # no component named: the denoiser's, as diffusers reads it


@dataclass(frozen=True)
class Part:
    """A component of the model (its UNet, a text encoder): its layers' weight shapes."""

    shapes: dict[str, tuple[int, ...]]  # layer name -> [outputs, inputs, ...]
    flat: dict[str, str]  # kohya's name of each layer (dots as underscores) -> its name
    tops: frozenset[str]  # its top-level blocks: down_blocks, mid_block, text_model, ...

    @classmethod
    def of(cls, shapes: dict[str, tuple[int, ...]]) -> "Part":
        shapes = {_unprefixed(name): shape for name, shape in shapes.items()}
        return cls(shapes, {name.replace(".", "_"): name for name in shapes},
                   frozenset(name.split(".")[0] for name in shapes))


def _model_parts(folder: Path) -> dict[str, Part | None]:
    """The model's components; None for one whose weights are not safetensors files here (not checked)."""
    index = json_object(folder / "model_index.json") or {}
    parts: dict[str, Part | None] = {}
    for component in COMPONENTS:
        spec = index.get(component)
        if not isinstance(spec, list) or None in spec:
            continue
        try:
            shapes = [once_per_file(f, _weight_shapes) for f in sorted((folder / component).glob("*.safetensors"))]
        except (OSError, LoraFileError):
            shapes = []
        parts[component] = Part.of({k: v for s in shapes for k, v in s.items()}) if shapes else None
    return parts


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {name.removesuffix(".weight"): tuple(entry["shape"]) for name, entry in header(path).items()
            if name.endswith(".weight") and isinstance(entry, dict) and isinstance(entry.get("shape"), list)}


def _misfit(layer: Layer, parts: dict[str, Part | None]) -> str | None:
    """`LAYER: why` it does not fit the model; None when it fits or cannot be checked here."""
    component = layer.component or ("unet" if "unet" in parts else "transformer")
    label = f"{component}.{layer.module}"
    if component not in parts:
        return f"{label}: the model has no {component}"
    part = parts[component]
    if part is None:
        return None
    sep = "_" if layer.flat else "."
    module = _unprefixed(layer.module, sep)
    module = part.flat.get(module, module) if layer.flat else module
    shape = part.shapes.get(module)
    if shape is None:
        # a name in the model's own terms (down_blocks..., encoder...) that it lacks; other
        # namings (kohya's input_blocks for SDXL) are left to the worker
        known = any(module.startswith(top + sep) for top in part.tops)
        return f"{label}: the model has no such layer" if known else None
    label = f"{component}.{module}"
    if layer.down is not None and (len(shape) < 2 or layer.down[1] != shape[1]):
        return f"{label}: {layer.down[1]} inputs, the model's has {shape[1] if len(shape) > 1 else 'none'}"
    if layer.up is not None and layer.up[0] != shape[0]:
        return f"{label}: {layer.up[0]} outputs, the model's has {shape[0]}"
    return None


def _unprefixed(name: str, sep: str = ".") -> str:
    """A CLIP text encoder's layer name without `text_model.`, which some saved files have and some
    (transformers 5) do not."""
    return name.removeprefix(f"text_model{sep}")


def json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file's object (a model's config); None where it cannot be read or is no object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
