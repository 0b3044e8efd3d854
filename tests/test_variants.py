"""A/B sets and grids as data: the axis syntax, shared seeds, the queue order, bad input."""

import dataclasses
import json

import pytest
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.sets.variants import CONFIRM_ABOVE, MAX_JOBS, VariantSet, parse_axis, plan_ab, plan_grid

BASE = JobSpec(prompt="a cat on a red sofa", model="demo", seed=100, count=3)


def refused(call, *args) -> SpecError:
    with pytest.raises(SpecError) as info:
        call(*args)
    return info.value


def test_ab_variants_share_the_seeds_and_differ_only_in_what_changed():
    ab = plan_ab([BASE, dataclasses.replace(BASE, prompt="a dog on a red sofa")])
    a, b = (v.spec for v in ab.variants)
    assert [v.label for v in ab.variants] == ["A", "B"]
    assert a.seeds == b.seeds == (100, 101, 102)
    differing = {k for k, v in a.to_dict().items() if b.to_dict()[k] != v}
    assert differing == {"prompt"}
    assert [v.changes for v in ab.variants] == [{"prompt": "a cat on a red sofa"}, {"prompt": "a dog on a red sofa"}]


def test_ab_draws_one_seed_list_for_every_variant_when_none_is_given():
    random = dataclasses.replace(BASE, seed=None)
    ab = plan_ab([random, dataclasses.replace(random, steps=4), dataclasses.replace(random, steps=8)])
    seeds = {v.spec.seeds for v in ab.variants}
    assert len(seeds) == 1 and len(next(iter(seeds))) == 3


@pytest.mark.parametrize(("change", "field"), [({"count": 2}, "count"), ({"seed": 5}, "seed")])
def test_ab_refuses_a_variant_that_changes_what_is_shared(change, field):
    error = refused(plan_ab, [BASE, dataclasses.replace(BASE, **change)])
    assert error.field == field and "variant B" in error.message


def test_ab_refuses_two_identical_variants_and_a_lone_one():
    assert "same as variant A" in refused(plan_ab, [BASE, BASE]).message
    assert "at least two" in refused(plan_ab, [BASE]).message


@pytest.mark.parametrize(("text", "values"), [
    ("steps=4, 8,16", (4, 8, 16)),
    ("steps=10..30 step 5", (10, 15, 20, 25, 30)),
    ("steps=30..10 step 10", (30, 20, 10)),
    ("steps=1..3, 8", (1, 2, 3, 8)),
    ("cfg=3..4 step 0.5", (3.0, 3.5, 4.0)),
    ("size=512x512, 768x512", ((512, 512), (768, 512))),
    ("sampler=euler, ddim", ("euler", "ddim")),
    ("seed=7..9", (7, 8, 9)),
])
def test_axis_syntax(text, values):
    assert parse_axis(text, BASE).values == values


def test_prompt_axis_replaces_a_word_and_keeps_the_original_first():
    axis = parse_axis("cat -> dog, fox", BASE)
    assert axis.name == "prompt"
    assert axis.values == ("a cat on a red sofa", "a dog on a red sofa", "a fox on a red sofa")
    assert axis.labels == ("cat", "dog", "fox")
    assert parse_axis("prompt=red -> blue", BASE).values[1] == "a cat on a blue sofa"


@pytest.mark.parametrize(("text", "says"), [
    ("steps=", "no values"),
    ("steps= , ,", "no values"),
    ("steps=4,,8", "empty value"),
    ("steps=10..30 step 0", "step 0"),
    ("steps=10..30 step -5", "negative step"),
    ("steps=4, 4", "twice"),
    ("steps=four", "not a whole number"),
    ("steps=0..2", "outside"),
    ("prompt=horse -> dog", "'horse' is not a word of the prompt"),
    ("prompt=ca -> dog", "'ca' is not a word of the prompt"),
    ("prompt=cat ->", "needs words"),
    ("prompt=a cat, a dog", "replaces a word"),
    ("colour=red, blue", "not a field"),
    ("8, 16", "names no field"),
    ("scheduler=warp", "unknown scheduler"),
    ("size=512", "WIDTHxHEIGHT"),
])
def test_bad_axes_say_what_is_wrong(text, says):
    error = refused(parse_axis, text, BASE, "y")
    assert error.field == "y"
    assert says in error.message


def test_grid_expands_every_cell_with_shared_seeds():
    grid = plan_grid(BASE, {"x": "steps=2,3,4", "y": "cat -> dog", "page": "cfg=5, 7"})
    assert len(grid.variants) == 12 and grid.images == 36
    assert {v.spec.seeds for v in grid.variants} == {(100, 101, 102)}
    assert len({(v.spec.steps, v.spec.prompt, v.spec.guidance) for v in grid.variants}) == 12
    assert grid.describe().startswith("3 × 2 × 2 = 12 jobs, 36 images, seeds 100..102")
    cell = next(v for v in grid.variants if v.cell == (1, 1, 0))
    assert cell.label == "steps=3 · prompt=dog · guidance=5"
    assert cell.changes == {"steps": 3, "prompt": "a dog on a red sofa", "guidance": 5.0}


def test_grid_order_changes_the_model_least_often():
    grid = plan_grid(BASE, {"x": "model=demo, demo2, tiny-sdxl", "y": "steps=2,3,4"})
    models = [v.spec.model for v in grid.variants]
    assert models == ["demo"] * 3 + ["demo2"] * 3 + ["tiny-sdxl"] * 3
    assert [v.spec.steps for v in grid.variants[:3]] == [2, 3, 4]


def test_a_replaced_word_is_a_whole_word():
    axis = parse_axis("cat -> dog", JobSpec(prompt="a cat, a concatenation, a cat."))
    assert axis.values[1] == "a dog, a concatenation, a dog."


def test_grid_axes_fill_columns_then_rows_then_pages():
    assert refused(plan_grid, BASE, {"x": "steps=1,2", "page": "cfg=5,7"}).field == "y"
    assert refused(plan_grid, BASE, {"y": "steps=1,2"}).field == "x"


def test_grid_refusals():
    assert "no axis" in refused(plan_grid, BASE, {"x": " "}).message
    assert "two axes" in refused(plan_grid, BASE, {"x": "steps=1,2", "y": "steps=3,4"}).message
    assert "two axes" in refused(plan_grid, BASE, {"x": "size=64x64", "y": "width=64,128"}).message
    assert refused(plan_grid, BASE, {"z": "steps=1,2"}).field == "z"
    too_many = refused(plan_grid, BASE, {"x": "seed=1..100", "y": "steps=1..30"})
    assert str(MAX_JOBS) in too_many.message
    cell = refused(plan_grid, BASE, {"x": "width=64, 65"})
    assert "width=65" in cell.message and "multiple of 8" in cell.message


def test_a_large_grid_asks_for_confirmation():
    assert not plan_grid(BASE, {"x": f"seed=1..{CONFIRM_ABOVE}"}).needs_confirmation()
    assert plan_grid(BASE, {"x": f"seed=1..{CONFIRM_ABOVE + 1}"}).needs_confirmation()


@pytest.mark.parametrize("plan", [lambda: plan_grid(BASE, {"x": "steps=2,3", "y": "size=64x64,64x96"}),
                                  lambda: plan_ab([BASE, dataclasses.replace(BASE, prompt="a dog on a red sofa")])])
def test_a_set_sent_to_a_daemon_arrives_as_the_same_set(plan):
    """VariantSet.to_dict goes over the daemon's socket as JSON; from_dict there must queue the same
    variants, specs and seeds, in the same order, with the same axes."""
    variants = plan()
    assert VariantSet.from_dict(json.loads(json.dumps(variants.to_dict()))) == variants
