"""The model registry: models.yaml, the built-in demo model, and where each model's files are;
the flows and routes (`flows:`, `routes:` in models.yaml, or in a flows.yaml beside it), with the
built-in demo flows and routes.

UI side: reads YAML and JSON only. The pipeline family is read from the model's
``model_index.json``, never guessed from its name.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from diffdeck.engines.core.budgets import Budgets
from diffdeck.engines.core.flows import Flow, Lora, Stage, stages_from
from diffdeck.engines.core.routes import Route, role_routes
from diffdeck.engines.core.spec import (
    DEVICES,
    DTYPES,
    HOSTED_KINDS,
    LOCAL_KIND,
    OFFLOAD_MODES,
    JobSpec,
    ModelSpec,
    SpecError,
    parse_size,
)
from diffdeck.engines.core.validation import is_cost, is_finite_number, is_int, is_number
from diffdeck.engines.core.yamlfile import parse_yaml, read_utf8

DEMO_FOLDER = Path(__file__).parents[1] / "demo_model"
BUILT_IN_LORAS = Path(__file__).parents[1] / "demo" / "loras"  # adapters for the demo model, by name
DEMO = ModelSpec(
    name="demo",
    source=str(DEMO_FOLDER),
    defaults={"steps": 15, "guidance": 5.0, "width": 64, "height": 64},
    memory_gb=0.1,
    seconds_per_step=0.02,  # measured: about 80 steps a second on one core of a laptop CPU
    roles=("preview",),
    # The drawn world's words (engines/demo/shapes.py; a test keeps the two the same).
    description=("built-in tiny SD-style model, trained on drawn shapes (engines/demo): "
                 "'a [small|large] COLOUR SHAPE [on a COLOUR background][, POSITION]'; "
                 "shapes: circle, square, triangle, star, ring, cross; colours: red, orange, yellow, green, cyan, "
                 "blue, purple, pink, white, black; positions: centre, left, right, top, bottom. "
                 "64x64, offline, on a CPU"),
    example="a small red star on a blue background, top",
)

# The demo's preview and final: the route pair that runs offline, on a CPU.
BUILTIN_FLOWS = {
    "demo-preview": Flow("demo-preview", (Stage("txt2img", model="demo", steps=8),),
                         "the demo at 8 steps: a quick look"),
    "demo-final": Flow("demo-final", (Stage("txt2img", model="demo", steps=20),
                                      Stage("upscale", model="demo", factor=2, method="lanczos", strength=0.5, steps=12)),
                       "the demo at 20 steps, then 2x Lanczos and an img2img pass at strength 0.5 (a hires fix)"),
}
BUILTIN_ROUTES = {"preview": Route("preview", flow="demo-preview"), "final": Route("final", flow="demo-final")}

# Image-to-image pipelines (an SDXL refiner's: stabilityai/stable-diffusion-xl-refiner-1.0) are of
# their family, but start from an image or latents: img2img, refine and upscale stages after another
# stage, never a flow's start (refused at submit: diffdeck.engines.core.flow_checks).
IMAGE_TO_IMAGE_PIPELINES = {
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
}
PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    **IMAGE_TO_IMAGE_PIPELINES,
}
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd": {"steps": 25, "guidance": 7.0, "width": 512, "height": 512},
    "sdxl": {"steps": 30, "guidance": 6.0, "width": 1024, "height": 1024},
    "sd3": {"steps": 28, "guidance": 4.5, "width": 1024, "height": 1024},
    "flux": {"steps": 28, "guidance": 3.5, "width": 1024, "height": 1024},
}
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_HUB_ID = re.compile(r"^(?![.~])[\w.-]+/(?!\.\.?$)[\w.-]+$")  # org/name, never ./x or ../x
_GPU = re.compile(r"cuda:\d+")  # device: one GPU of several
_DEFAULT_KEYS = ("steps", "guidance", "width", "height", "size")
_ENTRY_KEYS = {f.name for f in fields(ModelSpec)} - {"name"}
MODELS_SECTIONS = ("models", "flows", "routes", "budgets")  # a models file's top-level keys
# A hosted model is rendered by its provider's API: none of a local pipeline's keys apply to it,
# and its own keys (how to reach and pay the API) apply to nothing local.
_LOCAL_ONLY = ("revision", "dtype", "device", "gpus", "offload", "allow_pickle", "memory_gb", "seconds_per_step")
_HOSTED_ONLY = ("api_key_env", "base_url", "concurrency", "price_usd", "timeout_s", "options")
_HOSTED_DEFAULTS = {"width": 1024, "height": 1024}
MAX_CONCURRENCY = 16
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_PREFIXES = ("sk-", "sk_", "AIza", "ya29.")  # OpenAI's and Google's keys and tokens
_KEYS_REFUSED = "keys go in the environment, never in a file"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")  # where a key may go over plain http://: it never leaves the machine
# Each hosted kind's check of a model's entry (its model id and options; SpecError), run as models.yaml is
# read. The providers live above core: diffdeck.engines.hosted.providers fills this in when imported, as
# the CLI, the daemon and the Dispatcher do.
HOSTED_ENTRY_CHECKS: dict[str, Callable[[ModelSpec], None]] = {}


class RegistryError(Exception):
    """models.yaml is unreadable or names something that cannot be used."""


class DeviceError(Exception):
    """The devices this machine is declared to have cannot be read (DIFFDECK_FAKE_GPUS malformed)."""


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are on this machine, and what they are."""

    folder: Path | None  # None: not on this machine (a hub model not yet downloaded)
    family: str | None
    pipeline_class: str | None
    problem: str | None = None  # why the model cannot be loaded as it is
    hosted: str | None = None  # the provider whose API renders it (a hosted model has no files)

    @property
    def available(self) -> bool:
        return self.folder is not None and self.problem is None

    @property
    def image_to_image(self) -> bool:
        """An image-to-image pipeline (a refiner): it finishes other stages' images, it starts none."""
        return self.pipeline_class in IMAGE_TO_IMAGE_PIPELINES

    @property
    def note(self) -> str | None:
        """What a user should know before using the model, where it is not a plain txt2img model."""
        if self.hosted:
            return f"hosted: {self.hosted}'s API renders it (no steps, LoRAs or flows; each image costs money)"
        if not self.image_to_image:
            return None
        return (f"an image-to-image pipeline ({self.pipeline_class}): img2img, refine and upscale stages only, "
                "after another stage; it cannot start a flow")


@dataclass
class Registry:
    models: dict[str, ModelSpec]
    path: Path | None = None  # the models.yaml it was read from, if any
    flows: dict[str, Flow] = field(default_factory=lambda: dict(BUILTIN_FLOWS))
    routes: dict[str, Route] = field(default_factory=lambda: dict(BUILTIN_ROUTES))
    budgets: Budgets = field(default_factory=Budgets)  # models.yaml's `budgets:`

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(self.models)
            where = f" in {self.path}" if self.path else ""
            raise RegistryError(f"unknown model {name!r}{where}; known models: {known}") from None

    def flow(self, name: str) -> Flow:
        try:
            return self.flows[name]
        except KeyError:
            raise RegistryError(f"unknown flow {name!r}; flows: {', '.join(self.flows)}") from None

    def files(self, name: str) -> ModelFiles:
        return locate(self.get(name))

    def defaults(self, name: str, family: str | None) -> dict[str, Any]:
        """The job defaults for a model of `family`: the family's (a hosted model's: its size), overridden
        by its own entry."""
        spec = self.get(name)
        return {**(_HOSTED_DEFAULTS if spec.hosted else FAMILY_DEFAULTS.get(family or "sd", {})), **spec.defaults}

    def describe(self, name: str) -> dict[str, Any]:
        """What a prompt editor shows of a model: its job defaults, an example prompt, what it is.
        Raises RegistryError when the model cannot be found."""
        spec = self.get(name)
        return {"defaults": self.defaults(name, self.files(name).family), "example": spec.example,
                "description": spec.description,
                "hosted": {"provider": spec.kind, "model_id": spec.source, "lanes": spec.concurrency}
                if spec.hosted else None}

    def menu(self) -> dict[str, dict[str, Any]]:
        """`describe` of every model, or {"problem": why} where it cannot be found."""
        menu = {}
        for name in self.models:
            try:
                menu[name] = self.describe(name)
            except RegistryError as e:
                menu[name] = {"problem": str(e)}
        return menu

    def route_menu(self) -> dict[str, dict[str, Any]]:
        """What a route picker shows of each route: what it renders, in words ("about"); the kind of
        its first stage ("first_stage": img2img starts from an image, such as a promoted preview);
        the job fields it fills in where a job leaves them open ("fields", LoRAs left out)."""
        menu = {}
        for name, route in self.routes.items():
            flow = self.flows[route.flow] if route.flow else None
            about = f"{route.target()}: {flow.description}" if flow and flow.description else route.target()
            menu[name] = {"about": about, "first_stage": flow.stages[0].kind if flow else "txt2img",
                          "fields": {k: v for k, v in route.fields.items() if k != "loras"}}
        return menu

    def table(self) -> list[dict[str, Any]]:
        """A row per model, as `diffdeck models` lists them: where it comes from, whether it is
        here to render offline, and what is wrong with it if anything is."""
        rows = []
        for name, spec in self.models.items():
            files = self.files(name)
            rows.append({
                "name": name, "source": spec.source, "kind": spec.kind, "family": files.family,
                "pipeline_class": files.pipeline_class, "offline": files.available,
                "problem": files.problem or _absent(spec, files),
                "note": files.note,
                "roles": list(spec.roles), "description": spec.description, "example": spec.example,
                # a hosted model's key: the variable's name and whether it is set, never its value
                "key_env": spec.api_key_env, "key_set": key_set(spec) if spec.hosted else None,
            })
        return rows

    def memory_gb(self, name: str) -> float:
        spec = self.get(name)
        if spec.hosted:
            return 0.0
        if spec.memory_gb is not None:
            return spec.memory_gb
        folder = self.files(name).folder
        if folder is None:
            return 0.0
        weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
        return round(weights * 1.25 / 1e9, 2)


def _absent(spec: ModelSpec, files: ModelFiles) -> str | None:
    """What keeps a model that is not on this machine from rendering: a hosted model's unset key, a
    hub model's download."""
    if spec.hosted:
        return key_problem(spec)
    return None if files.folder else "not downloaded; the first render fetches it"


def key_problem(spec: ModelSpec) -> str | None:
    """Why a hosted model's key cannot be had from this environment (its variable unset or blank), or
    None: the line `diffdeck models`, a submit and the hosted worker all give."""
    value = os.environ.get(spec.api_key_env or "")
    if value is not None and value.strip():
        return None
    state = "not set" if value is None else "empty"
    return f"model {spec.name!r} needs its API key in ${spec.api_key_env}, which is {state}"


def key_set(spec: ModelSpec) -> bool:
    """Whether a hosted model's key variable is set here, to more than blanks."""
    return key_problem(spec) is None


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


def find_flows_file(models_file: Path | None) -> Path | None:
    """flows.yaml beside the models file; without one, ./flows.yaml, then the user config dir."""
    folders = [models_file.parent] if models_file else [Path("."), user_config_dir()]
    return next((folder / "flows.yaml" for folder in folders if (folder / "flows.yaml").is_file()), None)


def load_registry(explicit: str | os.PathLike | None = None) -> Registry:
    path = find_models_file(explicit)
    models = {DEMO.name: DEMO}
    written = []
    budgets = Budgets()
    if path is not None:
        data = _read_sections(path, MODELS_SECTIONS)
        models.update(_models_from(path, data))
        budgets = _budgets_from(path, data)
        written.append((path, data))
    flows_path = find_flows_file(path)
    if flows_path is not None:
        written.append((flows_path, _read_sections(flows_path, ("flows", "routes"))))
    flows = dict(BUILTIN_FLOWS)
    routes = {**BUILTIN_ROUTES, **role_routes({k: v for k, v in models.items() if k != DEMO.name})}
    user_routes: dict[str, Path] = {}
    for file, data in written:
        for name, flow in _flows_from(file, data).items():
            if name in flows:
                raise RegistryError(f"{file}: flow {name!r} is defined twice"
                                    + (" (it is a built-in flow's name)" if name in BUILTIN_FLOWS else ""))
            flows[name] = flow
        for name, route in _routes_from(file, data).items():
            if name in user_routes:
                raise RegistryError(f"{file}: route {name!r} is defined in {user_routes[name]} too")
            user_routes[name], routes[name] = file, route
    registry = Registry(models, path, flows, routes, budgets)
    _check_names(registry, {name: file for file, data in written for name in _section(file, data, "flows")},
                 user_routes)
    return registry


def parse_models_file(path: Path) -> dict[str, ModelSpec]:
    return _models_from(path, _read_sections(path, MODELS_SECTIONS))


def _read_sections(path: Path, sections: tuple[str, ...]) -> dict[str, Any]:
    data = parse_yaml(read_utf8(path, RegistryError), path, RegistryError) or {}
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a mapping with {' / '.join(f'{s}:' for s in sections)} sections")
    stray = [str(key) for key in data if key not in sections]
    if stray:  # most often entries written without the section above them, which would go unread
        where = ", ".join(f"{section} go under '{section}:'" for section in sections)
        raise RegistryError(f"{path}: the top-level key {stray[0]!r} is not known; {where}, as in models.example.yaml")
    for section in sections:
        _section(path, data, section)
    return data


def _budgets_from(path: Path, data: dict[str, Any]) -> Budgets:
    try:
        return Budgets.from_entry(data.get("budgets"))
    except SpecError as e:
        raise RegistryError(f"{path}: {e}") from None


def _section(path: Path, data: dict[str, Any], name: str) -> dict[str, Any]:
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise RegistryError(f"{path}: expected a '{name}:' section of named entries")
    return section


def _flows_from(path: Path, data: dict[str, Any]) -> dict[str, Flow]:
    flows = {}
    for name, entry in _section(path, data, "flows").items():
        where = f"{path}: flow {str(name)!r}"
        if not isinstance(entry, dict) or "stages" not in entry:
            raise RegistryError(f"{where}: expected a mapping with 'stages:', a list of stages")
        unknown = sorted(set(entry) - {"stages", "description"})
        if unknown:
            raise RegistryError(f"{where}: unknown key {unknown[0]!r}; keys are description, stages")
        try:
            stages = tuple(_stage_files_here(stage, path.parent) for stage in stages_from(entry["stages"]))
            flow = Flow(str(name), stages, str(entry.get("description", "")))
            flow.validate()
        except (SpecError, TypeError) as e:
            raise RegistryError(f"{where}: {e}") from None
        flows[str(name)] = flow
    return flows


def _stage_files_here(stage: Stage, folder: Path) -> Stage:
    """A stage's LoRA files named relative to the file that names them."""
    return replace(stage, loras=_loras_here(stage.loras, folder)) if stage.loras else stage


def _loras_here(loras: tuple[Lora, ...], folder: Path) -> tuple[Lora, ...]:
    """LoRA files named relative to `folder` where one is there; others as they are (a hub name, an absolute path)."""
    return tuple(replace(lora, source=str((folder / lora.source).resolve()))
                 if (folder / lora.source).exists() else lora for lora in loras)


def _routes_from(path: Path, data: dict[str, Any]) -> dict[str, Route]:
    routes = {}
    for name, entry in _section(path, data, "routes").items():
        try:
            route = Route.from_entry(str(name), entry, str(path))
        except SpecError as e:
            raise RegistryError(f"{path}: {e}") from None
        if route.fields.get("loras"):
            route.fields["loras"] = _loras_here(route.fields["loras"], path.parent)
        routes[str(name)] = route
    return routes


def _check_names(registry: Registry, flow_files: dict[str, Path], route_files: dict[str, Path]) -> None:
    """Every model a flow's stage names, every flow and model a route names, is in the registry."""
    for name, file in flow_files.items():
        for i, stage in enumerate(registry.flows[name].stages):
            if stage.model is not None and stage.model not in registry.models:
                raise RegistryError(f"{file}: flow {name!r} stages[{i}]: unknown model {stage.model!r}; "
                                    f"known models: {', '.join(registry.models)}")
    for name, file in route_files.items():
        route = registry.routes[name]
        if route.flow is not None and route.flow not in registry.flows:
            raise RegistryError(f"{file}: route {name!r}: unknown flow {route.flow!r}; flows: {', '.join(registry.flows)}")
        if route.model is not None and route.model not in registry.models:
            raise RegistryError(f"{file}: route {name!r}: unknown model {route.model!r}; "
                                f"known models: {', '.join(registry.models)}")


def _models_from(path: Path, data: dict[str, Any]) -> dict[str, ModelSpec]:
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
    if "api_key" in entry:  # its value is never repeated: it may be a key
        raise RegistryError(f"{where}: 'api_key:' is refused: {_KEYS_REFUSED}; set it in a variable and name "
                            "that with 'api_key_env:'")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise RegistryError(f"{where}: unknown key {unknown[0]!r}; keys are {', '.join(sorted(_ENTRY_KEYS))}")
    kind = entry.get("kind", LOCAL_KIND)
    if kind not in (LOCAL_KIND, *HOSTED_KINDS):
        raise RegistryError(f"{where}: kind {kind!r} is not one of {', '.join((LOCAL_KIND, *HOSTED_KINDS))}")
    hosted = kind != LOCAL_KIND
    misplaced = [key for key in (_LOCAL_ONLY if hosted else _HOSTED_ONLY) if key in entry]
    if misplaced:
        why = (f"applies to a local model only; a {kind} model is rendered by its provider" if hosted
               else f"applies to a hosted model only (kind: {', '.join(HOSTED_KINDS)})")
        raise RegistryError(f"{where}: {misplaced[0]!r} {why}")
    if not entry.get("source"):
        example = "the provider's model id, such as V_2_TURBO" if hosted else "a hub id such as org/name, or a folder"
        raise RegistryError(f"{where}: 'source:' is missing ({example})")
    defaults = _defaults(where, name, entry.get("defaults") or {}, hosted)
    roles = entry.get("roles") or []
    spec = ModelSpec(
        name=name, kind=kind, defaults=defaults,
        roles=tuple(map(str, roles)) if isinstance(roles, list) else (str(roles),),
        description=str(entry.get("description", "")), example=str(entry.get("example", "")),
        **(_hosted_fields(where, kind, entry) if hosted else _local_fields(path, where, entry)),
    )
    if kind in HOSTED_ENTRY_CHECKS:
        try:
            HOSTED_ENTRY_CHECKS[kind](spec)
        except SpecError as e:
            raise RegistryError(f"{where}: {e}") from None
    return spec


def _defaults(where: str, name: str, defaults: Any, hosted: bool) -> dict[str, Any]:
    """An entry's `defaults:`, checked as a job's fields; a hosted model's give its size only."""
    if not isinstance(defaults, dict):
        raise RegistryError(f"{where}: 'defaults:' must be a mapping such as {{steps: 20}}")
    allowed = [key for key in _DEFAULT_KEYS if not hosted or key not in ("steps", "guidance")]
    unknown = sorted(set(defaults) - set(allowed))
    if unknown:
        hosted_why = ", as its provider takes no steps or guidance" if hosted and unknown[0] in _DEFAULT_KEYS else ""
        raise RegistryError(f"{where}: {unknown[0]!r} cannot be a default{hosted_why}; defaults are {', '.join(allowed)}")
    try:
        JobSpec(prompt="check", model=name, **_size_split(defaults)).validate()
    except (SpecError, TypeError) as e:
        raise RegistryError(f"{where}: bad default {e}") from None
    return _size_split(defaults)


def _local_fields(path: Path, where: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A local model's own fields: where its files are, and how its pipeline loads."""
    for key, allowed in (("dtype", DTYPES), ("device", DEVICES), ("offload", OFFLOAD_MODES)):
        if key in entry and entry[key] not in allowed and not (key == "device" and _GPU.fullmatch(str(entry[key]))):
            raise RegistryError(f"{where}: {key} {entry[key]!r} is not one of {', '.join(allowed)}")
    source = str(entry["source"])
    if not _HUB_ID.match(source) or (path.parent / source).exists():
        source = str((path.parent / Path(source).expanduser()).resolve())
    step_s = entry.get("seconds_per_step")
    if step_s is not None and not (is_number(step_s) and step_s > 0):
        raise RegistryError(f"{where}: seconds_per_step must be a number above 0, got {step_s!r}")
    gpus = entry.get("gpus")
    if gpus is not None and not (isinstance(gpus, list) and gpus and all(is_int(g) and g >= 0 for g in gpus)):
        raise RegistryError(f"{where}: gpus must be a list of GPU indices such as [0, 1], got {gpus!r}")
    if gpus is not None and _GPU.fullmatch(str(entry.get("device", ""))):
        raise RegistryError(f"{where}: give either gpus or device cuda:N, not both")
    if not isinstance(entry.get("allow_pickle", False), bool):
        raise RegistryError(f"{where}: allow_pickle must be true or false, unquoted")
    return dict(source=source, revision=_opt_str(entry.get("revision")),
                dtype=entry.get("dtype", "auto"), device=entry.get("device", "auto"),
                gpus=tuple(gpus) if gpus is not None else None, offload=entry.get("offload", "none"),
                memory_gb=entry.get("memory_gb"), seconds_per_step=step_s, allow_pickle=entry.get("allow_pickle", False))


def _hosted_fields(where: str, kind: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A hosted model's own fields: its provider's model id, the variable its key is in, how to reach
    the API and how much of it to use at once."""
    fields = {"source": str(entry["source"]), "api_key_env": _key_variable(where, kind, entry.get("api_key_env")),
              "base_url": _base_url(where, entry.get("base_url"))}
    for key, ok, rule in (
        ("concurrency", lambda v: is_int(v) and 1 <= v <= MAX_CONCURRENCY, f"a whole number from 1 to {MAX_CONCURRENCY}"),
        ("price_usd", is_cost, "a number of US dollars an image, 0 or more"),
        ("timeout_s", lambda v: is_finite_number(v) and v > 0, "a number of seconds above 0"),
        ("options", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
         "a mapping of the provider's parameters, such as {quality: high}"),
    ):
        if key in entry:
            if not ok(entry[key]):
                raise RegistryError(f"{where}: {key} must be {rule}, got {entry[key]!r}")
            fields[key] = entry[key]
    return fields


def _key_variable(where: str, kind: str, name: Any) -> str:
    """`api_key_env:`, the name of the variable that holds the key. Its value is never repeated in
    an error: it may be the key itself, pasted there."""
    example = f"such as {kind.upper()}_API_KEY"
    if name is None:
        raise RegistryError(f"{where}: 'api_key_env:' is missing: the name of the environment variable that "
                            f"holds the API key, {example}")
    if isinstance(name, str) and _looks_like_key(name):
        raise RegistryError(f"{where}: api_key_env looks like a key: {_KEYS_REFUSED}; put it in a variable "
                            f"and give that variable's name, {example}")
    if not (isinstance(name, str) and _ENV_NAME.fullmatch(name)):
        raise RegistryError(f"{where}: api_key_env must be an environment variable's name (letters, digits and _, "
                            f"not starting with a digit), {example}")
    return name


def _looks_like_key(value: str) -> bool:
    """A secret where a variable's name goes: a known key prefix, or a long run of mixed-case letters
    and digits (or one without the _ that joins the words of a variable's name)."""
    if value.startswith(_KEY_PREFIXES):
        return True
    mixed_case = any(c.islower() for c in value) and any(c.isupper() for c in value)
    return len(value) >= 20 and any(c.isdigit() for c in value) and (mixed_case or "_" not in value)


def _base_url(where: str, url: Any) -> str | None:
    """`base_url:`, an http:// or https:// URL (without a trailing /); None: the provider's own."""
    if url is None:
        return None
    try:
        parts = urlsplit(str(url))
        host = parts.hostname
    except ValueError:  # a malformed port or IPv6 address
        host = None
    if not host or parts.scheme not in ("http", "https") or not str(url).isprintable():
        raise RegistryError(f"{where}: base_url must be an http:// or https:// URL such as https://api.example.com")
    if parts.username or parts.password:
        raise RegistryError(f"{where}: base_url holds a user name or password: {_KEYS_REFUSED}")
    if parts.scheme == "http" and host not in _LOOPBACK:
        raise RegistryError(f"{where}: base_url is http:// to {host}: the key would cross the network in clear "
                            f"text; use https:// (http:// only to {', '.join(_LOOPBACK)})")
    return str(url).rstrip("/")


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
    if spec.hosted:  # its provider's API renders it: no files, nothing to download
        return ModelFiles(None, None, None, hosted=spec.kind)
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

