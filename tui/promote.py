"""One image of a job queued again: as it was (re-queue), or promoted, its prompt, seed and
settings rendered through the `final` route. No widgets here."""

from __future__ import annotations

import dataclasses
from typing import Any

from diffdeck.engines.core.spec import JobSpec

PROMOTED_TO = "final"
# what a promoted job takes from its route, not from the preview: the preview's flow and stages,
# why it was routed, its init image (and that file's hash), its place in an A/B set
ROUTED = {"flow": None, "stages": (), "routed_by": None, "routed_from": None, "init_image": None, "init_sha256": None,
          "group": None}
# settings the preview's model or route may have filled in: final's model or route fills them again
FILLABLE = ("steps", "guidance", "width", "height", "scheduler")
OPEN = {f.name: f.default for f in dataclasses.fields(JobSpec) if f.name in FILLABLE}


def again(spec: dict[str, Any], seed: int, **changes: Any) -> JobSpec:
    """One image of the job `spec` (a JobSpec as a dict) with its `seed`, and `changes`."""
    fields = {k: v for k, v in spec.items() if k not in ("seeds", "seed", "count")}
    return JobSpec.from_dict({**fields, "seed": seed, "count": 1, **changes})


def promoted(spec: dict[str, Any], seed: int, init_image: str | None, filled: dict[str, Any]) -> JobSpec:
    """The image of `spec` with `seed` through the `final` route: its prompt and the settings the
    user gave. `filled`: the values the preview's model (its defaults) and route filled in; a
    setting still at one of them is left open, for final's model and route to fill (a preview
    model's 4 steps are not the final model's). `init_image` is the preview's PNG where final's
    flow starts with img2img (None where it renders from the prompt)."""
    opened = {name: OPEN[name] for name, value in filled.items() if name in OPEN and spec.get(name) == value}
    if ("width" in opened) != ("height" in opened):  # a size is one setting: kept whole
        for name in ("width", "height"):
            opened.pop(name, None)
    model = spec.get("routed_from") or spec["model"]  # the user's, where the preview's route took another
    return again(spec, seed, **{**ROUTED, **opened, "model": model, "route": PROMOTED_TO, "init_image": init_image})
