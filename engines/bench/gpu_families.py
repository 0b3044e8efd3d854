"""The pipelines `diffdeck bench gpu` measures: SD 1.5-, SDXL-, SD3.5 Medium- and Flux.1 dev-sized, as the
component configs of the real checkpoints describe them (gpu_configs/, one small JSON file a family: no
weights; random ones are drawn), or at toy scale, each component shrunk by the file's `toy` overrides: the
same classes and the same code path, small enough for a CPU. Pure data: no torch.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffdeck.engines.core.registry import FAMILY_DEFAULTS, PIPELINE_FAMILIES

CONFIG_FOLDER = Path(__file__).parent / "gpu_configs"
FAMILIES = ("sd15", "sdxl", "sd35m", "flux")  # smallest first
TOY_SIZE, TOY_STEPS = 64, 4
DEFAULT_BUDGET_S = 520  # a run's, the build included: within the ten minutes a GPU machine is lent for


@dataclass(frozen=True)
class Family:
    """One pipeline to build: its components (None: a component the pipeline has none of) and what
    it renders at (the family's usual size and steps, as diffdeck's registry defaults them)."""

    name: str
    about: str
    pipeline: str
    pipeline_config: dict[str, Any]
    components: dict[str, dict[str, Any] | None]
    width: int
    height: int
    steps: int
    guidance: float

    @property
    def family(self) -> str:
        """The registry's family: sd, sdxl, sd3, flux."""
        return PIPELINE_FAMILIES[self.pipeline]

    def spec(self, steps: int | None = None) -> dict[str, Any]:
        """What one image is rendered with, as a JobSpec's fields."""
        return {"prompt": PROMPT, "steps": steps or self.steps, "guidance": self.guidance,
                "width": self.width, "height": self.height}


PROMPT = "a lighthouse on a cliff at dusk, waves breaking below, oil painting"


def load(name: str, toy: bool = False) -> Family:
    data = json.loads((CONFIG_FOLDER / f"{name}.json").read_text(encoding="utf-8"))
    components = data["components"]
    if toy:
        components = {part: _shrunk(entry, data["toy"].get(part)) for part, entry in components.items()}
    defaults = FAMILY_DEFAULTS[PIPELINE_FAMILIES[data["pipeline"]]]
    width, height, steps = ((TOY_SIZE, TOY_SIZE, TOY_STEPS) if toy
                            else (defaults["width"], defaults["height"], defaults["steps"]))
    return Family(name, data["about"], data["pipeline"], data["pipeline_config"], components, width, height, steps,
                  defaults["guidance"])


def _shrunk(entry: dict[str, Any] | None, overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    if entry is None or not overrides:
        return entry
    return {**entry, "config": {**entry["config"], **overrides}}


def family_names(text: str) -> tuple[str, ...]:
    """An argparse type: families named with commas, in FAMILIES' order."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(FAMILIES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, unknown)) or 'none'}: the families are "
                                         f"{', '.join(FAMILIES)}, named with commas")
    return tuple(name for name in FAMILIES if name in names)
