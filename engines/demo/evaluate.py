"""Does the demo model follow prompts? Render a fixed set of captions through the real engine
(Dispatcher and worker) and score each image against its caption (`score.check`): accuracy per
attribute, for scenes like the training ones and for shape/colour pairs held out of training.

    diffdeck demo-eval [--model demo] [--per-group 60] [--json]

UI side: no torch here; the worker renders.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

from diffdeck.engines.core.events import Status
from diffdeck.engines.core.registry import Registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.demo.score import ATTRIBUTES, TARGETS, check
from diffdeck.engines.demo.shapes import Scene, random_scene
from diffdeck.engines.queue.dispatcher import Dispatcher
from PIL import Image

EVAL_SEED = 7


class RenderFailed(Exception):
    """An evaluation image could not be rendered (the job failed or was held)."""


def eval_scenes(per_group: int) -> dict[str, list[Scene]]:
    rng = random.Random(EVAL_SEED)
    return {"trained pairs": [random_scene(rng) for _ in range(per_group)],
            "held-out pairs": [random_scene(rng, held_out=True) for _ in range(per_group)]}


async def render_and_check(dispatcher: Dispatcher, model: str, scenes: list[Scene]) -> list[dict[str, bool]]:
    """Each scene's caption rendered (seed EVAL_SEED + its index) and checked against the scene."""
    jobs = [dispatcher.submit(JobSpec(prompt=scene.caption(), model=model, seed=EVAL_SEED + i))
            for i, scene in enumerate(scenes)]
    checks = []
    for scene, job in zip(scenes, jobs):
        job = await dispatcher.wait(job.id)
        if job.status != Status.DONE:
            raise RenderFailed(f"{scene.caption()!r}: {job.id} {job.status}: {job.error}")
        with Image.open(job.images[0]["path"]) as image:
            checks.append(check(image, scene))
    return checks


def accuracy(checks: list[dict[str, bool]]) -> dict[str, float]:
    return {a: sum(c[a] for c in checks) / len(checks) for a in ATTRIBUTES}


async def render_and_score(registry: Registry, model: str, per_group: int) -> dict[str, dict[str, Any]]:
    """Per group: accuracy per attribute, and each scene's caption with what was wrong."""
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        async with Dispatcher(registry, Path(folder)) as dispatcher:
            for name, scenes in eval_scenes(per_group).items():
                checks = await render_and_check(dispatcher, model, scenes)
                results[name] = {
                    "accuracy": accuracy(checks),
                    "misses": [{"prompt": s.caption(), "wrong": [a for a in ATTRIBUTES if not c[a]]}
                               for s, c in zip(scenes, checks) if not all(c.values())],
                }
    return results


def run(registry: Registry, model: str, per_group: int) -> dict[str, dict[str, Any]]:
    return asyncio.run(render_and_score(registry, model, per_group))


def meets_targets(results: dict[str, dict[str, Any]]) -> bool:
    return all(group["accuracy"][a] >= target for group in results.values() for a, target in TARGETS.items())
