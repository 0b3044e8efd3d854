"""The model registry: models.yaml, the built-in demo model, and where each model's files are.

UI side: reads YAML and JSON only. The pipeline family is read from the model's
``model_index.json``, never guessed from its name.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from diffdeck.engines.core.spec import DEVICES, DTYPES, OFFLOAD_MODES, JobSpec, ModelSpec, SpecError, parse_size
from diffdeck.engines.core.yamlfile import parse_yaml, read_utf8

DEMO_FOLDER = Path(__file__).parents[1] / "demo_model"
DEMO = ModelSpec(
    name="demo",
    source=str(DEMO_FOLDER),
    defaults={"steps": 15, "guidance": 5.0, "width": 64, "height": 64},
    memory_gb=0.1,
    roles=("preview",),
    # The drawn world's words (engines/demo/shapes.py; a test keeps the two the same).
    description=("built-in tiny SD-style model, trained on drawn shapes (engines/demo): "
                 "'a [small|large] COLOUR SHAPE [on a COLOUR background][, POSITION]'; "
                 "shapes: circle, square, triangle, star, ring, cross; colours: red, orange, yellow, green, cyan, "
                 "blue, purple, pink, white, black; positions: centre, left, right, top, bottom. "
                 "64x64, offline, on a CPU"),
    example="a small red star on a blue background, top",
)

PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd": {"steps": 25, "guidance": 7.0, "width": 512, "height": 512},
    "sdxl": {"steps": 30, "guidance": 6.0, "width": 1024, "height": 1024},
    "sd3": {"steps": 28, "guidance": 4.5, "width": 1024, "height": 1024},
    "flux": {"steps": 28, "guidance": 3.5, "width": 1024, "height": 1024},
}
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_HUB_ID = re.compile(r"^(?![.~])[\w.-]+/(?!\.\.?$)[\w.-]+$")  # org/name, never ./x or ../x
_DEFAULT_KEYS = ("steps", "guidance", "width", "height", "size")
_ENTRY_KEYS = {f.name for f in fields(ModelSpec)} - {"name"}


class RegistryError(Exception):
    """models.yaml is unreadable or names something that cannot be used."""


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are on this machine, and what they are."""

    folder: Path | None  # None: not on this machine (a hub model not yet downloaded)
    family: str | None
    pipeline_class: str | None
    problem: str | None = None  # why the model cannot be loaded as it is

    @property
    def available(self) -> bool:
        return self.folder is not None and self.problem is None


@dataclass
class Registry:
    models: dict[str, ModelSpec]
    path: Path | None = None  # the models.yaml it was read from, if any

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(self.models)
            where = f" in {self.path}" if self.path else ""
            raise RegistryError(f"unknown model {name!r}{where}; known models: {known}") from None

    def files(self, name: str) -> ModelFiles:
        return locate(self.get(name))

    def defaults(self, name: str, family: str | None) -> dict[str, Any]:
        """The job defaults for a model of `family`: the family's, overridden by its own entry."""
        return {**FAMILY_DEFAULTS.get(family or "sd", {}), **self.get(name).defaults}

    def describe(self, name: str) -> dict[str, Any]:
        """What a prompt editor shows of a model: its job defaults, an example prompt, what it is.
        Raises RegistryError when the model cannot be found."""
        spec = self.get(name)
        return {"defaults": self.defaults(name, self.files(name).family), "example": spec.example,
                "description": spec.description}

    def menu(self) -> dict[str, dict[str, Any]]:
        """`describe` of every model, or {"problem": why} where it cannot be found."""
        menu = {}
        for name in self.models:
            try:
                menu[name] = self.describe(name)
            except RegistryError as e:
                menu[name] = {"problem": str(e)}
        return menu

    def table(self) -> list[dict[str, Any]]:
        """A row per model, as `diffdeck models` lists them: where it comes from, whether it is
        here to render offline, and what is wrong with it if anything is."""
        rows = []
        for name, spec in self.models.items():
            files = self.files(name)
            rows.append({
                "name": name, "source": spec.source, "family": files.family,
                "pipeline_class": files.pipeline_class, "offline": files.available,
                "problem": files.problem or (None if files.folder else "not downloaded; the first render fetches it"),
                "roles": list(spec.roles), "description": spec.description, "example": spec.example,
            })
        return rows

    def memory_gb(self, name: str) -> float:
        spec = self.get(name)
        if spec.memory_gb is not None:
            return spec.memory_gb
        folder = self.files(name).folder
        if folder is None:
            return 0.0
        weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
        return round(weights * 1.25 / 1e9, 2)


def user_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "diffdeck"


def find_models_file(explicit: str | os.PathLike | None = None) -> Path | None:
    """`--models FILE`, then $DIFFDECK_MODELS, then ./models.yaml, then the user config dir."""
    for candidate, named in (
        (explicit, True),
        (os.environ.get("DIFFDECK_MODELS"), True),
        ("models.yaml", False),
        (user_config_dir() / "models.yaml", False),
    ):
        if not candidate:
            continue
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
        if named:
            raise RegistryError(f"models file {path} does not exist")
    return None


def load_registry(explicit: str | os.PathLike | None = None) -> Registry:
    path = find_models_file(explicit)
    models = {DEMO.name: DEMO}
    if path is not None:
        models.update(parse_models_file(path))
    return Registry(models, path)


def parse_models_file(path: Path) -> dict[str, ModelSpec]:
    data = parse_yaml(read_utf8(path, RegistryError), path, RegistryError) or {}
    if not isinstance(data, dict) or not isinstance(data.get("models") or {}, dict):
        raise RegistryError(f"{path}: expected a mapping with a 'models:' section of named entries")
    stray = [str(key) for key in data if key != "models"]
    if stray:  # most often entries written without the section above them, which would go unread
        raise RegistryError(f"{path}: the top-level key {stray[0]!r} is not known; models go under 'models:', "
                            "as in models.example.yaml")
    models = {}
    for name, entry in (data.get("models") or {}).items():
        models[str(name)] = _model_from_entry(path, str(name), entry)
    return models


def _model_from_entry(path: Path, name: str, entry: Any) -> ModelSpec:
    where = f"{path}: model {name!r}"
    if name == DEMO.name:
        raise RegistryError(f"{where}: the name 'demo' is reserved for the built-in model")
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: expected a mapping with at least 'source:'")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise RegistryError(f"{where}: unknown key {unknown[0]!r}; keys are {', '.join(sorted(_ENTRY_KEYS))}")
    if not entry.get("source"):
        raise RegistryError(f"{where}: 'source:' is missing (a hub id such as org/name, or a folder)")
    for key, allowed in (("dtype", DTYPES), ("device", DEVICES), ("offload", OFFLOAD_MODES)):
        if key in entry and entry[key] not in allowed:
            raise RegistryError(f"{where}: {key} {entry[key]!r} is not one of {', '.join(allowed)}")
    source = str(entry["source"])
    if not _HUB_ID.match(source) or (path.parent / source).exists():
        source = str((path.parent / Path(source).expanduser()).resolve())
    defaults = entry.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise RegistryError(f"{where}: 'defaults:' must be a mapping such as {{steps: 20}}")
    unknown = sorted(set(defaults) - set(_DEFAULT_KEYS))
    if unknown:
        raise RegistryError(f"{where}: {unknown[0]!r} cannot be a default; defaults are {', '.join(_DEFAULT_KEYS)}")
    try:
        JobSpec(prompt="check", model=name, **_size_split(defaults)).validate()
    except (SpecError, TypeError) as e:
        raise RegistryError(f"{where}: bad default {e}") from None
    roles = entry.get("roles") or []
    if not isinstance(entry.get("allow_pickle", False), bool):
        raise RegistryError(f"{where}: allow_pickle must be true or false, unquoted")
    return ModelSpec(
        name=name, source=source, revision=_opt_str(entry.get("revision")),
        dtype=entry.get("dtype", "auto"), device=entry.get("device", "auto"),
        offload=entry.get("offload", "none"), defaults=_size_split(defaults),
        memory_gb=entry.get("memory_gb"), roles=tuple(map(str, roles)) if isinstance(roles, list) else (str(roles),),
        description=str(entry.get("description", "")), example=str(entry.get("example", "")),
        allow_pickle=entry.get("allow_pickle", False),
    )


def _size_split(defaults: dict[str, Any]) -> dict[str, Any]:
    """Allow `size: 512x768` in defaults as well as width/height."""
    out = {k: v for k, v in defaults.items() if k != "size"}
    if "size" in defaults:
        out["width"], out["height"] = parse_size(defaults["size"])
    return out


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of a hub model, or None when it is not downloaded."""
    repo = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = revision or "main"
    ref_file = repo / "refs" / ref
    commit = ref_file.read_text().strip() if ref_file.is_file() else ref
    snapshot = repo / "snapshots" / commit
    return snapshot if (snapshot / "model_index.json").is_file() else None


def snapshot_commit(folder: Path) -> str | None:
    """The hub commit a cached snapshot folder holds (its name), None for other folders."""
    return folder.name if folder.parent.name == "snapshots" else None


def locate(spec: ModelSpec) -> ModelFiles:
    source = Path(spec.source)
    if source.suffix.lower() in _PICKLE_SUFFIXES:
        return ModelFiles(None, None, None, _pickle_refusal(spec, source.name))
    if source.suffix.lower() == ".safetensors":
        return ModelFiles(None, None, None,
                          f"{source.name} is a single-file checkpoint; diffdeck loads diffusers folders "
                          "(a folder with model_index.json)")
    if source.is_absolute():
        if not source.is_dir():
            return ModelFiles(None, None, None, f"model folder {source} does not exist")
        folder = source
    else:
        folder = hub_snapshot(spec.source, spec.revision)
        if folder is None:
            return ModelFiles(None, None, None)
    return inspect_folder(spec, folder)


def inspect_folder(spec: ModelSpec, folder: Path) -> ModelFiles:
    index_file = folder / "model_index.json"
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        pipeline_class = str(index["_class_name"])
    except FileNotFoundError:
        return ModelFiles(folder, None, None, f"{folder} has no model_index.json; is it a diffusers pipeline folder?")
    except (ValueError, KeyError, TypeError):
        return ModelFiles(folder, None, None, f"{index_file} is not a valid diffusers model index")
    family = PIPELINE_FAMILIES.get(pipeline_class)
    if family is None:
        supported = ", ".join(PIPELINE_FAMILIES)
        return ModelFiles(folder, None, pipeline_class,
                          f"pipeline {pipeline_class} is not supported; diffdeck renders {supported}")
    if not spec.allow_pickle:
        for sub in folder.iterdir():
            if sub.is_dir() and _only_pickle_weights(sub):
                return ModelFiles(folder, family, pipeline_class, _pickle_refusal(spec, sub.name))
    return ModelFiles(folder, family, pipeline_class)


def _only_pickle_weights(component: Path) -> bool:
    names = [p.name for p in component.iterdir()]
    has_pickle = any(n.endswith(_PICKLE_SUFFIXES) for n in names)
    return has_pickle and not any(n.endswith(".safetensors") for n in names)


def _pickle_refusal(spec: ModelSpec, what: str) -> str:
    return (f"model {spec.name!r}: {what} holds pickle weights, which can run arbitrary code when "
            "loaded; convert them to safetensors, or set 'allow_pickle: true' on the model if you trust them")

