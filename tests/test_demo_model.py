"""The shipped demo model follows prompts: a handful of captions rendered by the real engine (the
Dispatcher, a worker, the committed weights) and read back by the evaluation's scorer, with margins
that a model drawing the wrong colour or ignoring the caption would not meet."""

import asyncio

import pytest
from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER, load_registry
from diffdeck.engines.demo.evaluate import render_and_check
from diffdeck.engines.demo.score import check
from diffdeck.engines.demo.shapes import Scene
from diffdeck.engines.queue.dispatcher import Dispatcher

SCENES = [
    Scene("circle", "red", "blue", "large", "centre"),
    Scene("square", "yellow", "black", "large", "left"),
    Scene("triangle", "green", "white", "large", "top"),
    Scene("star", "blue", "yellow", "large", "right"),
    Scene("ring", "white", "purple", "large", "bottom"),
    Scene("cross", "orange", "cyan", "large", "centre"),
    Scene("square", "pink", "green", "small", "right"),
    Scene("triangle", "black", "orange", "small", "bottom"),
    Scene("star", "red", "white", "large", "centre"),  # held out of training
    Scene("circle", "green", "pink", "small", "left"),  # held out of training
]


def checks(tmp_path, scenes):
    """Each scene's caption rendered by the demo model, seed 7 + its index, and read back."""
    async def go():
        async with Dispatcher(load_registry(None), tmp_path) as dispatcher:
            return await render_and_check(dispatcher, "demo", scenes)
    return asyncio.run(go())


def right(results, attribute):
    return sum(result[attribute] for result in results)


@pytest.mark.slow
def test_the_demo_model_draws_what_the_caption_asks(tmp_path):
    results = checks(tmp_path, SCENES)
    assert right(results, "colour") >= 8 and right(results, "background") >= 8, results
    assert right(results, "shape") >= 7 and right(results, "position") >= 7 and right(results, "size") >= 8, results


@pytest.mark.slow
def test_one_word_changed_with_the_same_seeds_changes_the_colour_drawn(tmp_path):
    """The same two seeds for a red and for a blue star and square: each comes out in the colour
    its own caption asks for, so the colour follows the word, not the seed."""
    def scenes(colour):
        return [Scene("star", colour, "white", "large", "centre"), Scene("square", colour, "yellow", "small", "left")]
    red, blue = checks(tmp_path / "red", scenes("red")), checks(tmp_path / "blue", scenes("blue"))
    assert all(result["colour"] for result in red + blue), (red, blue)


def test_the_demo_folder_renders_with_plain_diffusers_and_no_dtype_given():
    """What the README says it is: a Stable Diffusion pipeline folder that diffusers loads and
    calls as it stands, every component in one dtype."""
    import diffusers
    import torch

    pipe = diffusers.DiffusionPipeline.from_pretrained(DEMO_FOLDER)
    scene = Scene("circle", "red", "blue", "large", "centre")
    image = pipe(scene.caption(), num_inference_steps=DEMO.defaults["steps"], guidance_scale=DEMO.defaults["guidance"],
                 generator=torch.Generator().manual_seed(7)).images[0]
    assert image.size == (DEMO.defaults["width"], DEMO.defaults["height"])
    assert check(image, scene)["colour"] and check(image, scene)["background"]
