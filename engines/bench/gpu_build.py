"""Random-weight pipelines of the families in gpu_configs/, saved as diffusers folders.

Each component is drawn on the device (a GPU draws Flux's 12 billion weights in seconds), cast to the
dtype diffdeck's worker loads its family in there, and written once into a store: every pipeline that
has the same component (the T5-XXL of SD3.5 and Flux, the CLIP ViT-L of all four, in one dtype) gets
hard links to the same files, so the disk holds each once. Random weights draw noise, with the real
compute, memory and load profile. Worker side: imports torch.

The tokenizers are synthetic: the real vocabularies are downloads. Each is of the real type, its
vocabulary printable ASCII one character a token; prompts are padded to the same length either way
(77 tokens for CLIP, 256 or 512 for T5), so the text encoders compute what they do for real prompts.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import diffusers
import torch
import transformers
from diffdeck.engines.bench.gpu_families import Family
from diffdeck.engines.core.spec import ModelSpec
from diffdeck.engines.worker.diffusers_adapter import dtype_name, pick_dtype

DISK_MARGIN = 2e9  # bytes a component leaves free on the disk, for everything else


class BuildError(Exception):
    """A component cannot be built or written (its config, the disk)."""


def build(family: Family, out: Path, device: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`family`'s pipeline in `out`/<name>, its shared components under `out`/.store. Returns
    what it took: seconds, bytes of weights, the dtype."""
    started = time.perf_counter()
    dtype = pick_dtype(ModelSpec(family.name, str(out)), family.family, device)
    folder = out / family.name
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": family.pipeline, "_diffusers_version": diffusers.__version__,
                             **family.pipeline_config}
    for part, entry in family.components.items():
        index[part] = [None, None] if entry is None else [entry["library"], entry["class"]]
        if entry is not None:
            _link_tree(_stored(entry, dtype, device, out / ".store", log), folder / part)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    weights = sum(path.stat().st_size for path in folder.rglob("*.safetensors"))
    return {"folder": str(folder), "seconds": round(time.perf_counter() - started, 2), "bytes": weights,
            "dtype": dtype_name(dtype)}


def _stored(entry: dict[str, Any], dtype: torch.dtype, device: str, store: Path, log: Callable[[str], None]) -> Path:
    """The folder the component is saved in, built now unless another pipeline built it already."""
    key = hashlib.sha256(json.dumps([entry, str(dtype)], sort_keys=True).encode()).hexdigest()[:16]
    path = store / f"{entry['class']}-{key}"
    if path.is_dir():
        return path
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    component = _component(entry, dtype, device)
    try:
        _check_disk(component, store, entry["class"])
        log(f"writing {entry['class']} ({_size(component)})")
        component.save_pretrained(partial)
    finally:
        del component
        free_memory(device)
    partial.rename(path)
    return path


def _component(entry: dict[str, Any], dtype: torch.dtype, device: str):
    library, name = entry["library"], entry["class"]
    if "vocab" in entry:
        return synthetic_tokenizer(name, entry["model_max_length"])
    cls = getattr(diffusers if library == "diffusers" else transformers, name)
    if name.endswith("Scheduler"):
        return cls.from_config(entry["config"])
    torch.manual_seed(0)
    with torch.device(device):  # drawn where it will run: seconds on a GPU, not minutes on the CPU
        try:
            model = cls.from_config(entry["config"]) if library == "diffusers" else cls(cls.config_class(**entry["config"]))
        except (TypeError, ValueError) as e:
            raise BuildError(f"{name}: {e}") from None
    return model.to(dtype).eval()


def synthetic_tokenizer(name: str, max_length: int):
    """A tokenizer of type `name` (CLIPTokenizer, T5TokenizerFast) that has printable ASCII for its
    vocabulary, one character a token, and the special tokens where the real vocabulary has them:
    CLIP's start and end last (its text encoder pools at the highest id), T5's pad, end and unknown first."""
    characters = [chr(code) for code in range(33, 127)]
    if name == "CLIPTokenizer":
        words = [*characters, *(c + "</w>" for c in characters), "<|startoftext|>", "<|endoftext|>"]
        return transformers.CLIPTokenizer(vocab={word: i for i, word in enumerate(words)}, merges=[],
                                          model_max_length=max_length)
    if name == "T5TokenizerFast":
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0), *((c, -2.0) for c in characters)]
        return transformers.T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)
    raise BuildError(f"no synthetic tokenizer of type {name}")


def _check_disk(component, store: Path, name: str) -> None:
    if not isinstance(component, torch.nn.Module):
        return
    need, free = _bytes(component), shutil.disk_usage(store.parent).free
    if need > free - DISK_MARGIN:
        raise BuildError(f"{name} needs {need / 1e9:.1f} GB on the disk and {free / 1e9:.1f} GB is free "
                         f"(keeping {DISK_MARGIN / 1e9:g} GB)")


def _bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _size(component) -> str:
    if not isinstance(component, torch.nn.Module):
        return "config only"
    return f"{sum(p.numel() for p in component.parameters()) / 1e9:.2f} billion weights, {_bytes(component) / 1e9:.2f} GB"


def _link_tree(source: Path, target: Path) -> None:
    """`target` with a hard link for each file of `source`: the same bytes on the disk once."""
    for path in source.rglob("*"):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif not destination.exists():
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, destination)


def free_memory(device: str) -> None:
    """What was let go of, given back: the GPU's cached blocks to the driver."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
