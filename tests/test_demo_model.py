"""The shipped demo model follows prompts: a handful of captions rendered by the real engine (the
Dispatcher, a worker, the committed weights) and read back by the evaluation's scorer, with margins
that a model drawing the wrong colour or ignoring the caption would not meet."""

import asyncio

import pytest

from engines.demo_train.evaluate import render_and_check
from engines.demo_train.shapes import HELD_OUT, Scene
from engines.dispatcher import Dispatcher
from engines.registry import load_registry

SCENES = [
    Scene("circle", "red", "blue", "large", "centre"),
    Scene("square", "yellow", "black", "large", "left"),
    Scene("triangle", "green", "white", "large", "top"),
    Scene("star", "blue", "yellow", "large", "right"),
    Scene("ring", "white", "purple", "large", "bottom"),
    Scene("cross", "orange", "cyan", "large", "centre"),
    Scene("star", "red", "white", "large", "centre"),  # held out of training
    Scene("circle", "green", "pink", "large", "left"),  # held out of training
]


def checks(tmp_path, scenes):
    async def go():
        async with Dispatcher(load_registry(None), tmp_path) as dispatcher:
            return await render_and_check(dispatcher, "demo", scenes)
    return asyncio.run(go())


def right(results, attribute):
    return sum(result[attribute] for result in results)


def test_the_scenes_include_held_out_pairs():
    assert sum((s.shape, s.colour) in HELD_OUT for s in SCENES) == 2


def test_the_demo_model_draws_what_the_caption_asks(tmp_path):
    results = checks(tmp_path, SCENES)
    assert right(results, "colour") >= 7 and right(results, "background") >= 7, results
    assert right(results, "shape") >= 5 and right(results, "position") >= 5, results


@pytest.mark.parametrize("colour", ["red", "blue"])
def test_the_colour_asked_for_is_the_colour_drawn(tmp_path, colour):
    """Same seeds, one word changed: a red star comes out red and a blue star blue."""
    scenes = [Scene("star", colour, "white", "large", "centre"), Scene("square", colour, "yellow", "large", "left")]
    assert all(result["colour"] for result in checks(tmp_path, scenes))
