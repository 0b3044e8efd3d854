"""A/B sets and grids: several jobs that share one seed list and differ only in named fields.

    A/B    variants given whole (two prompts, say); each differs from the first only in the
           fields the user changed, and every variant renders the same seeds.
    grid   up to three axes (x, y, page) over any field, written as
               steps=4, 8, 16          a list
               steps=10..30 step 5     a numeric range (ends included; step 1 when left out)
               prompt=cat -> dog, fox  the prompt with a word replaced (the first value is as written)
           expanded into one job per cell, ordered so that the model changes least often.

Besides the job's fields: `route` and `flow`, a field of the flow's stages of one kind
(`upscale.strength=0.3, 0.5`: every upscale stage; the flow is copied into the job first), and
`lora.weight` (every LoRA of the job).

Pure data: no torch. Errors are SpecErrors naming the axis or field, so the CLI and the TUI show
them as they are; nothing is queued until the whole set is valid.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass
from typing import Any

from diffdeck.engines.core.flow_checks import expand
from diffdeck.engines.core.flows import STAGE_KINDS
from diffdeck.engines.core.registry import Registry, RegistryError
from diffdeck.engines.core.spec import MAX_STEPS, JobSpec, SpecError, check_scheduler, draw_seeds, parse_size
from diffdeck.engines.core.text import counted

AXES = ("x", "y", "page")
CONFIRM_ABOVE = 50  # a set of more jobs is queued only when the user confirms it
MAX_JOBS = 2000  # refused outright: a typo such as steps=1..1000 should not fill the queue
# What a grid axis may range over: axis name -> JobSpec fields it sets.
AXIS_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt",), "negative": ("negative_prompt",), "model": ("model",), "steps": ("steps",),
    "guidance": ("guidance",), "scheduler": ("scheduler",), "size": ("width", "height"),
    "width": ("width",), "height": ("height",), "seed": ("seeds",), "route": ("route",), "flow": ("flow",),
}
# The stage fields an axis `KIND.FIELD` may range over, with the type of their values.
STAGE_AXIS_FIELDS: dict[str, type] = {"steps": int, "guidance": float, "scheduler": str, "strength": float,
                                      "factor": float, "method": str, "tile": int, "switch": float, "model": str}
LORA_WEIGHT = "lora.weight"
ALIASES = {"cfg": "guidance", "sampler": "scheduler", "negative_prompt": "negative", "neg": "negative"}
# The fields A/B variants may differ in; seeds and count are shared by construction.
VARIANT_FIELDS = ("prompt", "negative_prompt", "model", "steps", "guidance", "scheduler", "width", "height",
                  "route", "flow")
_RANGE = re.compile(r"^(?P<start>[-+]?[\d.]+)\s*\.\.\s*(?P<end>[-+]?[\d.]+)(?:\s+step\s+(?P<step>[-+]?[\d.]+))?$")


@dataclass(frozen=True)
class Axis:
    name: str  # a key of AXIS_FIELDS
    text: str  # the values as the user wrote them
    values: tuple[Any, ...]  # one per position: a field value, (w, h) for size, a whole prompt
    labels: tuple[str, ...]  # how each value is shown: "8", "512x512", "dog"

    def changes(self, index: int, count: int) -> dict[str, Any]:
        """The JobSpec fields that position `index` of this axis sets."""
        value = self.values[index]
        if self.name == "size":
            return {"width": value[0], "height": value[1]}
        if self.name == "seed":
            return {"seeds": draw_seeds(value, count), "seed": value}
        return {AXIS_FIELDS[self.name][0] if self.name in AXIS_FIELDS else self.name: value}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "text": self.text, "labels": list(self.labels),
                "values": [list(v) if isinstance(v, tuple) else v for v in self.values]}


@dataclass(frozen=True)
class Variant:
    label: str  # "A", "B", ...; in a grid its axis labels, "steps=8 · model=demo"
    changes: dict[str, Any]  # the fields it sets on top of the base
    cell: tuple[int, ...]  # its position: (i,) in an A/B set, one index per axis in a grid
    spec: JobSpec

    def to_dict(self) -> dict[str, Any]:
        changes = {k: list(v) if isinstance(v, tuple) else v for k, v in self.changes.items()}
        return {"label": self.label, "changes": changes, "cell": list(self.cell)}


@dataclass(frozen=True)
class VariantSet:
    kind: str  # "ab" or "grid"
    base: JobSpec  # what every variant shares, its seeds fixed
    variants: tuple[Variant, ...]  # in queue order
    axes: tuple[Axis, ...] = ()

    @property
    def images(self) -> int:
        return sum(v.spec.count for v in self.variants)

    def describe(self) -> str:
        """The size of the set in words, shown before anything is queued."""
        models = len({v.spec.model for v in self.variants})
        shape = " × ".join(str(len(a.values)) for a in self.axes) if self.axes else f"{len(self.variants)} variants"
        return (f"{shape} = {counted(len(self.variants), 'job')}, {counted(self.images, 'image')}, "
                f"seeds {_seed_text(self.base)}"
                + (f", {models} models" if models > 1 else ""))

    def needs_confirmation(self) -> bool:
        return len(self.variants) > CONFIRM_ABOVE

    @classmethod
    def from_record(cls, entry: dict[str, Any], specs: dict[str, JobSpec]) -> tuple["VariantSet", list[str]]:
        """A set as a session recorded it, with the variants whose jobs are in `specs` (job id ->
        its recorded spec, seeds and all), and those jobs' ids in the set's order: a replay queues
        the same variants with the same seeds."""
        kept = [v for v in entry["variants"] if v["job"] in specs]
        variants = tuple(Variant(v["label"], v["changes"], tuple(v["cell"]), specs[v["job"]]) for v in kept)
        axes = tuple(Axis(a["name"], a["text"], tuple(tuple(x) if isinstance(x, list) else x for x in a["values"]),
                          tuple(a["labels"])) for a in entry["axes"])
        return cls(entry["kind"], JobSpec.from_dict(entry["base"]), variants, axes), [v["job"] for v in kept]

    def record(self) -> dict[str, Any]:
        """The set as a session records it (job ids are added by the Dispatcher)."""
        return {"kind": self.kind, "base": self.base.to_dict(), "axes": [a.to_dict() for a in self.axes]}

    def to_dict(self) -> dict[str, Any]:
        """The whole set, each variant with its spec: sent to an engine daemon to be queued there."""
        return {**self.record(), "variants": [{**v.to_dict(), "spec": v.spec.to_dict()} for v in self.variants]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VariantSet":
        numbered = [{**v, "job": str(i)} for i, v in enumerate(data["variants"])]
        specs = {v["job"]: JobSpec.from_dict(v["spec"]) for v in numbered}
        return cls.from_record({**data, "variants": numbered}, specs)[0]


def plan_ab(specs: list[JobSpec]) -> VariantSet:
    """Variants given whole. The first is the base; the others may differ from it only in
    VARIANT_FIELDS, and all render the first one's seeds. Each variant's changes name its value
    of every field that some variant changes."""
    _check_ab_size(len(specs))
    base = _with_seeds(specs[0])
    varied = [name for name in VARIANT_FIELDS if any(getattr(s, name) != getattr(base, name) for s in specs)]
    planned = []
    for i, spec in enumerate(specs):
        label = chr(ord("A") + i)
        changes = {name: getattr(spec, name) for name in varied}  # A's values too: each label says it all
        shared = [f.name for f in dataclasses.fields(JobSpec)
                  if f.name not in (*VARIANT_FIELDS, "seed", "seeds", "group")
                  and getattr(spec, f.name) != getattr(base, f.name)]
        if shared:
            raise SpecError(shared[0], f"variant {label} changes {shared[0]}, which every variant shares; "
                                       "set it once for all of them")
        if spec.seed is not None and spec.seed != specs[0].seed or spec.seeds not in (None, specs[0].seeds):
            raise SpecError("seed", f"variant {label} has its own seed; every variant renders the seeds of A")
        planned.append((changes, dataclasses.replace(base, **changes)))
    return _ab_set(base, planned)


def _check_ab_size(count: int) -> None:
    if count < 2:
        raise SpecError("variants", "an A/B set needs at least two variants")
    if count > 26:
        raise SpecError("variants", f"{count} variants; an A/B set takes at most 26 (A to Z): use a grid")


def _ab_set(base: JobSpec, planned: list[tuple[dict[str, Any], JobSpec]]) -> VariantSet:
    """The A/B set of (changes, spec) variants, A first; the same changes twice are refused."""
    variants, seen = [], {}
    for i, (changes, spec) in enumerate(planned):
        label = chr(ord("A") + i)
        key = tuple(sorted(changes.items()))
        if key in seen:
            raise SpecError("variants", f"variant {label} is the same as variant {seen[key]}; change a field")
        seen[key] = label
        variants.append(Variant(label, changes, (i,), spec))
    for variant in variants:
        variant.spec.validate()
    return VariantSet("ab", base, tuple(_cheapest_order(variants)))


def plan_varied(base: JobSpec, prompts: list[str], vary: list[str], registry: Registry | None = None) -> VariantSet:
    """An A/B set as `diffdeck ab` gives it: one variant per prompt, or one prompt and a value per
    variant of each field in `vary` (`FIELD=A,B`, the grid's syntax), all on `base`'s seeds.
    `registry`: where the flows are, for axes over stage fields."""
    axes = [parse_axis(text, base, "--vary") for text in vary]
    one_axis_per_field([axis.name for axis in axes])
    if any(axis.name == "seed" for axis in axes):
        raise SpecError("--vary", "variants share their seeds; to vary the seed, use diffdeck grid --x seed=...")
    if len(prompts) > 1 and any(axis.name == "prompt" for axis in axes):
        raise SpecError("--vary", "give several prompts or --vary prompt=..., not both")
    n = len(prompts) if len(prompts) > 1 else len(axes[0].values) if axes else 1
    for axis in axes:
        if len(axis.values) != n:
            raise SpecError("--vary", f"{axis.text} gives {counted(len(axis.values), 'value')} for {n} variants; "
                                      "give one per variant (for every combination, use diffdeck grid)")
    _check_ab_size(n)
    base = _with_seeds(dataclasses.replace(base, prompt=prompts[0]))
    planned = []
    for i in range(n):
        changes = {k: v for axis in axes for k, v in axis.changes(i, 1).items()}
        if len(prompts) > 1:
            changes["prompt"] = prompts[i]
        planned.append((changes, _varied(base, changes, registry, chr(ord("A") + i))))
    return _ab_set(base, planned)


def plan_grid(base: JobSpec, axes: dict[str, str], registry: Registry | None = None) -> VariantSet:
    """A grid over up to three axes (x, y, page), each given as text, as in the module doc.
    `registry`: where the flows are, for axes over stage fields."""
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise SpecError(unknown[0], f"is not a grid axis; the axes are {', '.join(AXES)}")
    base = _with_seeds(base)
    given = [axis for axis in AXES if (axes.get(axis) or "").strip()]
    if not given:
        raise SpecError("x", "the grid has no axis; give one, for example steps=10..30 step 10")
    if given != list(AXES[:len(given)]):  # the columns first, then the rows, then the pages
        missing = next(axis for axis in AXES if axis not in given)
        raise SpecError(missing, f"a grid with a {given[-1]} axis needs a {missing} axis first")
    parsed = [parse_axis(axes[axis], base, axis) for axis in given]
    one_axis_per_field([a.name for a in parsed])
    total = 1
    for axis in parsed:
        total *= len(axis.values)
    if total > MAX_JOBS:
        raise SpecError("grid", f"{total} jobs is more than diffdeck queues at once ({MAX_JOBS}); "
                                "use fewer values or a coarser step")
    variants = []
    for cell in itertools.product(*(range(len(a.values)) for a in parsed)):
        changes: dict[str, Any] = {}
        for axis, i in zip(parsed, cell):
            changes.update(axis.changes(i, base.count))
        label = " · ".join(f"{a.name}={a.labels[i]}" for a, i in zip(parsed, cell))
        variants.append(Variant(label, changes, cell, _varied(base, changes, registry, f"the cell {label}")))
    return VariantSet("grid", base, tuple(_cheapest_order(variants)), tuple(parsed))


def _varied(base: JobSpec, changes: dict[str, Any], registry: Registry | None, where: str) -> JobSpec:
    """`base` with a variant's changes, checked. A route or a flow replaces the other (and must
    be one there is); a stage field sets it on every stage of its kind (the flow copied into the
    job first)."""
    fields = {k: v for k, v in changes.items() if "." not in k}
    routed = "route" in fields or "flow" in fields
    if routed:
        fields = {"route": None, "flow": None, **fields, "stages": (), "routed_by": None}
    spec = dataclasses.replace(base, **fields)
    try:
        if routed and registry is not None:
            _known_route_and_flow(spec, registry)
        for name, value in changes.items():
            if name == LORA_WEIGHT:
                spec = _weighed(spec, value)
            elif "." in name:
                spec = _with_stage_field(spec, name, value, registry)
        spec.validate()
    except SpecError as e:
        raise SpecError(e.field, f"in {where}: {e.message}") from None
    return spec


def _known_route_and_flow(spec: JobSpec, registry: Registry) -> None:
    try:
        expand(spec, registry)
    except RegistryError as e:
        raise SpecError("flow" if spec.flow else "model", str(e)) from None


def _with_stage_field(spec: JobSpec, name: str, value: Any, registry: Registry | None) -> JobSpec:
    kind, _, field_name = name.partition(".")
    if not spec.stages and registry is not None:
        spec = expand(spec, registry)
    if not any(stage.kind == kind for stage in spec.stages):
        flow = f"flow {spec.flow}" if spec.flow else "this job"
        kinds = ", ".join(stage.kind for stage in spec.stages) or "none: give it --flow or --route"
        raise SpecError(name, f"{flow} has no {kind} stage to vary (its stages: {kinds})")
    return dataclasses.replace(spec, stages=tuple(dataclasses.replace(stage, **{field_name: value})
                                                  if stage.kind == kind else stage for stage in spec.stages))


def _weighed(spec: JobSpec, weight: float) -> JobSpec:
    """Every LoRA of the job, its own and its stages', at `weight`."""
    def weighed(loras):
        return loras if loras is None else tuple(dataclasses.replace(lora, weight=weight) for lora in loras)
    if not spec.loras and not any(stage.loras for stage in spec.stages):
        raise SpecError(LORA_WEIGHT, "the job has no LoRA to weigh; give it one (--lora FILE)")
    return dataclasses.replace(spec, loras=weighed(spec.loras),
                               stages=tuple(dataclasses.replace(stage, loras=weighed(stage.loras)) for stage in spec.stages))


def one_axis_per_field(names: list[str]) -> None:
    for name in names:
        if names.count(name) > 1 or (name == "size" and {"width", "height"} & set(names)):
            raise SpecError(name, "is on two axes; put each field on one axis")


def parse_axis(text: str, base: JobSpec, axis: str = "x") -> Axis:
    """`field=values` (module doc). A bare `word -> a, b` is a prompt axis."""
    text = text.strip()
    name, sep, values = text.partition("=")
    if not sep or "->" in name:
        if "->" not in text:
            raise SpecError(axis, f"{text!r} names no field; write FIELD=VALUES, for example steps=4, 8, 16 "
                                  f"(fields: {', '.join(AXIS_FIELDS)})")
        name, values = "prompt", text
    name = ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in AXIS_FIELDS and not _is_stage_field(name):
        raise SpecError(axis, f"{name!r} is not a field a grid can vary; fields: {', '.join(AXIS_FIELDS)}, "
                              f"{LORA_WEIGHT}, and KIND.FIELD of a flow's stages (upscale.strength; kinds: "
                              f"{', '.join(STAGE_KINDS)}; fields: {', '.join(STAGE_AXIS_FIELDS)})")
    values = values.strip()
    if not values or not values.strip(", "):
        raise SpecError(axis, f"{name}= has no values; for example {_EXAMPLES.get(name, f'{name}=0.3, 0.5')}")
    if name in ("prompt", "negative"):
        return _replacement_axis(name, values, base, axis)
    items = [item.strip() for item in values.split(",")]
    if "" in items:
        raise SpecError(axis, f"{name}={values} has an empty value between commas")
    parsed: list[Any] = []
    for item in items:
        parsed += _parse_values(name, item, axis)
    labels = tuple(f"{v[0]}x{v[1]}" if name == "size" else _number_label(v) for v in parsed)
    duplicate = next((label for i, label in enumerate(labels) if label in labels[:i]), None)
    if duplicate is not None:
        raise SpecError(axis, f"{name}={values} lists {duplicate} twice")
    return Axis(name, text, tuple(parsed), labels)


_EXAMPLES = {"prompt": "prompt=cat -> dog, fox", "negative": "negative=blurry -> noisy, dark",
             "model": "model=demo, sd-turbo", "steps": "steps=10..30 step 5", "guidance": "guidance=3, 5.5, 7",
             "scheduler": "scheduler=euler, ddim", "size": "size=512x512, 768x512", "width": "width=512, 768",
             "height": "height=512, 768", "seed": "seed=1..4", "route": "route=preview, final",
             "flow": "flow=demo-preview, demo-final"}


def _is_stage_field(name: str) -> bool:
    kind, _, field_name = name.partition(".")
    return name == LORA_WEIGHT or (kind in STAGE_KINDS and field_name in STAGE_AXIS_FIELDS)


def _value_type(name: str) -> type:
    if name == LORA_WEIGHT:
        return float
    if "." in name:
        return STAGE_AXIS_FIELDS[name.partition(".")[2]]
    return {"model": str, "scheduler": str, "route": str, "flow": str, "guidance": float}.get(name, int)


def _replacement_axis(name: str, values: str, base: JobSpec, axis: str) -> Axis:
    """`word -> other, another`: the base text, then the base text with `word` replaced by each."""
    word, arrow, replacements = values.partition("->")
    word = word.strip()
    if not arrow or not word:
        raise SpecError(axis, f"a {name} axis replaces a word: {_EXAMPLES[name]}")
    field_name = AXIS_FIELDS[name][0]
    original = getattr(base, field_name)
    pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)")  # the word, not a part of another
    if not pattern.search(original):
        raise SpecError(axis, f"{word!r} is not a word of the {name.replace('negative', 'negative prompt')} "
                              f"{original!r}; replace a word that is there")
    words = [w.strip() for w in replacements.split(",")]
    if not replacements.strip() or "" in words:
        raise SpecError(axis, f"{word} -> needs words to put in its place, separated by commas")
    labels = (word, *words)
    duplicate = next((w for i, w in enumerate(labels) if w in labels[:i]), None)
    if duplicate is not None:
        raise SpecError(axis, f"{duplicate!r} appears twice in {values!r}")
    replaced = tuple(pattern.sub(lambda _match, w=w: w, original) for w in words)
    return Axis(name, f"{name}={values}", (original, *replaced), labels)


def _parse_values(name: str, item: str, axis: str) -> list[Any]:
    kind = _value_type(name)
    try:
        if name.rpartition(".")[2] == "scheduler":
            check_scheduler(item, None)
        if name == "size":
            return [parse_size(item)]
    except SpecError as e:
        raise SpecError(axis, e.message) from None
    if kind is str:
        return [item]
    match = _RANGE.match(item)
    values = _range(kind, name, match, axis) if match else [_number(kind, name, item, axis)]
    if name == "steps" and not all(1 <= v <= MAX_STEPS for v in values):
        raise SpecError(axis, f"steps={item} goes outside 1..{MAX_STEPS}")
    return values


def _range(kind: type, name: str, match: re.Match, axis: str) -> list[Any]:
    start, end = (_number(kind, name, match[k], axis) for k in ("start", "end"))
    step = _number(kind, name, match["step"], axis) if match["step"] else kind(1)
    if step == 0:
        raise SpecError(axis, f"{match[0]} has step 0; give a positive step, for example {name}=10..30 step 5")
    if step < 0:
        raise SpecError(axis, f"{match[0]} has a negative step; steps are positive, and {end}..{start} counts down")
    direction = 1 if end >= start else -1
    count = int(abs(end - start) / step + 1e-9) + 1
    if count > MAX_JOBS:
        raise SpecError(axis, f"{match[0]} has {count} values; more than a grid takes ({MAX_JOBS})")
    return [kind(round(start + direction * i * step, 6)) for i in range(count)]


def _number(kind: type, name: str, text: str, axis: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise SpecError(axis, f"{text!r} is not a {'number' if kind is float else 'whole number'} for {name}") from None
    return value


def _number_label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _with_seeds(spec: JobSpec) -> JobSpec:
    """The spec with its seed list drawn now, once, so every variant shares it. Checked first:
    a count below one draws no seeds."""
    spec.validate()
    seeds = spec.seeds or draw_seeds(spec.seed, spec.count)
    return dataclasses.replace(spec, seeds=seeds, seed=seeds[0])


def _seed_text(spec: JobSpec) -> str:
    seeds = spec.seeds or ()
    return f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else str(seeds[0]) if seeds else "random"


def _cheapest_order(variants: list[Variant]) -> list[Variant]:
    """Every job of one model before the next model's: a worker loads once per set. Within a
    model the cells keep their order (page, then y, then x: the order a reader scans a sheet)."""
    models = list(dict.fromkeys(v.spec.model for v in variants))
    return sorted(variants, key=lambda v: (models.index(v.spec.model), tuple(reversed(v.cell))))
