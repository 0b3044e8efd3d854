"""The demo scorer reads back what a drawn scene shows: on clean drawings, on drawings degraded
like a model's output (blur and noise), and on an image with no shape at all."""

import random

import numpy as np
import pytest
from diffdeck.engines.demo.evaluate import accuracy as checked_accuracy
from diffdeck.engines.demo.score import STRIPED, Reading, check, read, stripe_gaps
from diffdeck.engines.demo.shapes import COLOURS, SIDE, Scene, draw, random_scene
from PIL import Image, ImageFilter

SCENES = 300


def blurred_and_noisy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Roughly how a small diffusion model's output differs from the drawing: softer and grainier."""
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1)), dtype=np.float64)
    pixels = pixels + rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module", params=[False, True], ids=["training", "held_out"])
def drawn(request):
    rng = random.Random(1 + request.param)
    scenes = [random_scene(rng, held_out=request.param) for _ in range(SCENES)]
    return scenes, [draw(scene, rng) for scene in scenes]


def accuracy(scenes, images) -> dict[str, float]:
    return checked_accuracy([check(image, scene) for image, scene in zip(images, scenes)])


def test_clean_drawings_read_back_correctly(drawn):
    scores = accuracy(*drawn)
    assert all(value >= 0.99 for value in scores.values()), scores


def test_blurred_noisy_drawings_still_read_back(drawn):
    scenes, images = drawn
    rng = np.random.default_rng(0)
    scores = accuracy(scenes, [blurred_and_noisy(image, rng) for image in images])
    assert all(value >= 0.95 for value in scores.values()), scores


def test_a_plain_background_shows_no_shape():
    image = Image.new("RGB", (SIDE, SIDE), COLOURS["green"])
    assert read(image) == Reading(None, None, "green", None, None)
    noisy = blurred_and_noisy(image, np.random.default_rng(1))
    assert read(noisy).shape is None
    assert check(noisy, Scene("circle", "red", "green", "small", "centre")) == {
        "colour": False, "background": True, "shape": False, "position": False, "size": False}


def test_a_red_star_on_blue_reads_red_not_blue():
    scene = Scene("star", "red", "blue", "small", "top")
    assert read(draw(scene)) == Reading("star", "red", "blue", "small", "top")
    assert all(check(draw(scene), scene).values())
    assert not check(draw(scene), Scene("star", "blue", "red", "small", "top"))["colour"]


def test_stripes_read_back_and_plain_shapes_never_read_striped():
    """Every plain shape of the world, small rings (the hole) included, stays plain; striped ones,
    drawn or blurred and noisy, read as striped, with their colours."""
    rng, noise = random.Random(5), np.random.default_rng(5)
    plain = [random_scene(rng) for _ in range(SCENES)]
    striped = [random_scene(rng, pattern="striped") for _ in range(100)]
    assert max(stripe_gaps(draw(scene, rng)) for scene in plain) < STRIPED
    assert all(read(draw(scene, rng)).pattern is None for scene in plain)
    for images in ([draw(scene, rng) for scene in striped], [blurred_and_noisy(draw(s, rng), noise) for s in striped]):
        readings = [read(image) for image in images]
        assert sum(r.pattern == "striped" for r in readings) >= 85
        assert sum((r.colour, r.background) == (s.colour, s.background) for r, s in zip(readings, striped)) >= 95
