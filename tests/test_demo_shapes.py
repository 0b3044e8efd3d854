"""The demo model's training world: captions from the grammar, the word-level tokenizer, and
held-out shape/colour pairs that training never draws."""

import random

from diffdeck.engines.demo.shapes import COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES, Scene, draw, random_scene


def test_captions_follow_the_grammar():
    scene = Scene("star", "red", "blue", "small", "top")
    assert scene.caption() == "a small red star on a blue background, top"
    assert scene.caption(frozenset()) == "a red star"
    assert scene.caption(frozenset({"background"})) == "a red star on a blue background"


def test_training_never_draws_a_held_out_pair_and_evaluation_only_those():
    rng = random.Random(0)
    trained = [random_scene(rng) for _ in range(2000)]
    held = [random_scene(rng, held_out=True) for _ in range(200)]
    assert not {(s.shape, s.colour) for s in trained} & set(HELD_OUT)
    assert {(s.shape, s.colour) for s in held} == set(HELD_OUT)
    assert all(s.background != s.colour for s in trained + held)
    assert {s.shape for s in trained} == set(SHAPES) and {s.colour for s in trained} == set(COLOURS)
    assert {s.size for s in trained} == set(SIZES) and {s.position for s in trained} == set(POSITIONS)


def test_a_scene_is_drawn_in_its_colours_where_it_says():
    image = draw(Scene("square", "yellow", "black", "large", "left"))
    assert image.size == (64, 64)
    assert image.getpixel((20, 32)) == COLOURS["yellow"] and image.getpixel((60, 32)) == COLOURS["black"]


def test_the_tokenizer_reads_each_word_of_the_grammar_as_one_token():
    from diffdeck.engines.demo.train import tokenizer

    tok = tokenizer()
    words = ["a", "on", "background", *SHAPES, *COLOURS, *SIZES, *POSITIONS]
    assert all(tok.tokenize(word) == [word + "</w>"] for word in words)
    assert tok.tokenize("a small red star on a blue background, top") == [
        "a</w>", "small</w>", "red</w>", "star</w>", "on</w>", "a</w>", "blue</w>", "background</w>", ",</w>", "top</w>"]



def test_the_demo_models_description_names_the_drawn_worlds_words():
    """The registry spells the grammar out (the runtime never imports the training's world)."""
    from diffdeck.engines.core.registry import DEMO
    from diffdeck.engines.demo.shapes import COLOURS, POSITIONS, SHAPES, SIZES

    assert f"'a [{'|'.join(SIZES)}] COLOUR SHAPE" in DEMO.description
    for words in (SHAPES, COLOURS, POSITIONS):
        assert ", ".join(words) in DEMO.description


def test_a_striped_scene_is_large_with_bands_of_the_background_across_it():
    rng = random.Random(0)
    scenes = [random_scene(rng, pattern="striped") for _ in range(50)]
    assert {s.size for s in scenes} == {"large"} and {s.pattern for s in scenes} == {"striped"}
    scene = Scene("square", "yellow", "black", "large", "centre", "striped")
    assert scene.caption(frozenset({"background"})) == "a striped yellow square on a black background"
    image = draw(scene)
    def near(pixel, colour):  # Lanczos rings a little next to each band's edges
        return max(abs(a - b) for a, b in zip(pixel, COLOURS[colour])) <= 20

    column = [image.getpixel((32, y)) for y in range(20, 45)]
    assert near(image.getpixel((32, 32)), "yellow") and near(image.getpixel((32, 38)), "black")
    assert sum(near(pixel, "black") for pixel in column) >= 8  # gaps across the shape, not only beside it
