"""LoRA adapters for one job, on the pipeline a worker keeps loaded: loaded through peft as
the job's stages first ask for them, switched per stage, and unloaded when the job ends, so the
base model's weights are exactly as they were for the next job. The file is found as it was at
submit (diffdeck.engines.core.flow_checks.lora_file: a path, or `org/repo[/file]` in the hub cache,
never downloaded here), and one whose SHA-256 is not the one taken then (changed since) fails the
job: what is recorded is what rendered. Worker side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffdeck.engines.core.flow_checks import file_sha256, lora_file
from diffdeck.engines.core.flows import Lora
from diffdeck.engines.core.registry import hub_cache_dir


class Adapters:
    """The adapters loaded into one pipeline (and the pipelines made from it, which share its modules)."""

    def __init__(self, pipe: Any):
        self._pipe = pipe
        self._names: dict[str, str] = {}  # source -> adapter name
        self._active: dict[str, float] | None = {}  # adapter name -> weight; {}: the base model as it is

    def use(self, loras: tuple[Lora, ...]) -> None:
        """Render with exactly `loras` at their weights from now on (none: the base model alone)."""
        wanted: dict[str, float] = {}
        for lora in loras:
            name = self._load(lora)
            wanted[name] = wanted.get(name, 0.0) + lora.weight  # one file named twice: its weights add up
        if wanted == self._active:
            return
        if wanted:
            self._pipe.enable_lora()
            self._pipe.set_adapters(list(wanted), list(wanted.values()))
        else:
            self._pipe.disable_lora()
        self._active = wanted

    def clear(self) -> None:
        """Unload every adapter: the peft layers are taken out and the base layers put back."""
        if self._names:
            self._pipe.unload_lora_weights()
        self._names, self._active = {}, {}

    def _load(self, lora: Lora) -> str:
        source = lora.source
        if source not in self._names:
            name = f"lora{len(self._names)}"
            self._pipe.load_lora_weights(str(_unchanged_file(lora)), adapter_name=name)
            self._names[source] = name
            self._active = None  # loading activates the new adapter
        return self._names[source]


def _unchanged_file(lora: Lora) -> Path:
    """The adapter's file, found as at submit (a local path, or `org/repo[/file.safetensors]` in
    the hub cache: never downloaded here); ValueError when it is not the file hashed then (sha256
    None: not resolved, unchecked)."""
    path = lora_file(lora.source)
    digest = file_sha256(path) if path and lora.sha256 else None
    if lora.sha256 and digest != lora.sha256:
        now = f"its sha256 is now {digest[:12]}..." if digest else "it is gone"
        raise ValueError(f"LoRA {lora.source} has changed since the job was submitted ({now}, it was "
                         f"{lora.sha256[:12]}... then); submit the job again to render with the file as it is now")
    if path is None:
        raise FileNotFoundError(f"LoRA file {lora.source} does not exist, nor is it a downloaded hub adapter "
                                f"in {hub_cache_dir()}")
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA {lora.source} is not a .safetensors file; pickle files can run code when loaded")
    return path
