"""Routes: preview vs final (and any intent) as configuration, picked by name, by the prompt's
rules, or by a cost cap; and A/B sets and grids over routes, flows, stage fields and LoRA weights."""

import json
from pathlib import Path

import pytest
import yaml
from diffdeck.engines.core.flow_checks import estimate_seconds, overriding, resolve_flow, route_job
from diffdeck.engines.core.flows import Lora
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.core.registry import DEMO_FOLDER, load_registry
from diffdeck.engines.core.routes import Rule, choose_route
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.engines.record.png_metadata import read_record
from diffdeck.engines.record.session import Session
from diffdeck.engines.sets.variants import plan_grid, plan_varied
from helpers import diffdeck, one_line_error
from PIL import Image
from PIL.PngImagePlugin import PngInfo

ROUTES = {
    "typography": {"model": "demo", "steps": 30, "when": {"quoted": True}},
    "texture": {"flow": "demo-final", "when": {"keywords": ["striped", "dotted"]}},
    "shapes": {"flow": "demo-preview", "when": {"regex": r"\b(star|ring)s?\b", "keywords": ["small"]}},
}


@pytest.fixture
def registry(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {}, "routes": ROUTES}, sort_keys=False))
    return load_registry(path)


def test_rules_hold_on_quoted_text_whole_keywords_and_regexes_together():
    assert Rule(quoted=True).reason('a sign that says "OPEN"') == 'the prompt has quoted text "OPEN"'
    assert Rule(quoted=True).reason("a sign") is None
    keywords = Rule(keywords=("striped",))
    assert keywords.reason("a STRIPED circle") == "the prompt has the keyword 'striped'"
    assert keywords.reason("a pinstriped circle") is None, "whole words only"
    both = Rule(keywords=("small",), regex=r"\bstars?\b")
    assert both.reason("a small star") == "the prompt has the keyword 'small' and the prompt matches /\\bstars?\\b/ at 'star'"
    assert both.reason("a large star") is None and both.reason("a small ring") is None, "every condition must hold"


def test_auto_takes_the_first_route_whose_rule_holds_else_final(registry):
    routes = registry.routes
    assert choose_route('a poster saying "HELLO", striped', routes, "auto")[0] == "typography"
    assert choose_route("a striped circle", routes, "auto") == (
        "texture", "route texture, by its rule: the prompt has the keyword 'striped'")
    assert choose_route("a red circle", routes, "auto") == ("final", "route final: no route's rule holds for the prompt")
    assert choose_route("a red circle", routes, "preview") == ("preview", "route preview, as asked")
    with pytest.raises(SpecError, match="unknown route 'nope'; routes: auto, preview, final, typography"):
        choose_route("x", routes, "nope")


def test_a_route_to_a_model_fills_the_fields_the_job_leaves_open_and_says_why(registry):
    job = resolve_flow(JobSpec('a sign saying "OPEN"', route="auto"), registry)
    assert (job.model, job.steps, job.route, job.stages) == ("demo", 30, "typography", ())
    assert job.routed_by == ('route typography, by its rule: the prompt has quoted text "OPEN": '
                             f"model demo (steps 30) [{registry.path}]")
    assert resolve_flow(JobSpec('a sign saying "OPEN"', route="typography", steps=5), registry).steps == 5


def test_the_built_in_routes_render_the_demo_flows(registry):
    preview = resolve_flow(JobSpec("a red circle", route="preview"), registry)
    final = resolve_flow(JobSpec("a red circle", route="final"), registry)
    assert (preview.flow, [s.steps for s in preview.stages]) == ("demo-preview", [8])
    assert (final.flow, [(s.kind, s.steps) for s in final.stages]) == ("demo-final", [("txt2img", 20), ("upscale", 12)])
    assert resolve_flow(final, registry) == final, "a routed job is not routed again (a replay)"


def test_a_cost_cap_takes_the_preview_route_when_the_estimate_is_over_it(registry):
    preview, final = (estimate_seconds(JobSpec("x", route=name), registry) for name in ("preview", "final"))
    assert 0 < preview < final, "8 steps cost less than 20 steps and an upscale pass"
    capped = route_job(JobSpec("a red circle", route="final"), registry, max_cost_s=(preview + final) / 2)
    assert (capped.route, capped.flow) == ("preview", "demo-preview")
    assert "route final, as asked, but its estimate of" in capped.routed_by and "over the cost cap" in capped.routed_by
    kept = route_job(JobSpec("a red circle", route="final"), registry, max_cost_s=final * 2)
    assert kept.route == "final" and "cap" in kept.routed_by
    with pytest.raises(SpecError, match="give a route"):
        route_job(JobSpec("x"), registry, max_cost_s=1)


def test_a_job_naming_a_flow_and_a_route_to_another_flow_is_refused(registry):
    with pytest.raises(SpecError, match="the job names flow 'demo-preview' and route final names flow 'demo-final'"):
        Dispatcher(registry, Path("unused")).submit(JobSpec("x", route="final", flow="demo-preview"))


# A/B sets and grids

def test_a_grid_over_routes_shares_its_seeds_and_each_cell_routes_at_submit(registry):
    grid = plan_grid(JobSpec("a red circle", seed=7, count=2), {"x": "route=preview, final"}, registry)
    assert [v.spec.route for v in grid.variants] == ["preview", "final"]
    assert {v.spec.seeds for v in grid.variants} == {(7, 8)}
    dispatcher = Dispatcher(registry, Path("unused"))
    jobs = dispatcher.submit_set(grid)[1]
    assert [(job.spec.flow, job.spec.seeds) for job in jobs] == [("demo-preview", (7, 8)), ("demo-final", (7, 8))]


def test_a_grid_over_a_stage_field_sets_it_on_the_flows_stages_of_that_kind(registry):
    grid = plan_grid(JobSpec("a red circle", route="final", seed=1), {"x": "upscale.strength=0.3, 0.5",
                                                                      "y": "txt2img.steps=10, 20"}, registry)
    cells = {v.label: v.spec.stages for v in grid.variants}
    assert [(s.kind, s.strength) for s in cells["upscale.strength=0.3 · txt2img.steps=20"]] == [("txt2img", None),
                                                                                                 ("upscale", 0.3)]
    assert cells["upscale.strength=0.5 · txt2img.steps=10"][0].steps == 10
    assert grid.variants[0].changes == {"upscale.strength": 0.3, "txt2img.steps": 10}
    with pytest.raises(SpecError, match=r"stages\[1\].strength: in the cell upscale.strength=1.5: must be a number"):
        plan_grid(JobSpec("x", flow="demo-final"), {"x": "upscale.strength=0.5, 1.5"}, registry)
    with pytest.raises(SpecError, match="flow demo-preview has no upscale stage to vary .its stages: txt2img."):
        plan_grid(JobSpec("x", route="preview"), {"x": "upscale.strength=0.3, 0.5"}, registry)
    with pytest.raises(SpecError, match="'upscale.strenght' is not a field a grid can vary"):
        plan_grid(JobSpec("x", route="preview"), {"x": "upscale.strenght=0.3"}, registry)


def test_an_ab_set_over_flows_and_a_grid_over_lora_weights(registry, tmp_path):
    ab = plan_varied(JobSpec("a red circle", seed=4), ["a red circle"], ["flow=demo-preview, demo-final"], registry)
    assert [(v.label, v.spec.flow) for v in ab.variants] == [("A", "demo-preview"), ("B", "demo-final")]
    lora = Lora(str(tmp_path / "striped.safetensors"))
    grid = plan_grid(JobSpec("a striped circle", seed=4, loras=(lora,)), {"x": "lora.weight=0..1 step 0.25"})
    assert [v.spec.loras[0].weight for v in grid.variants] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [v.label for v in grid.variants][:2] == ["lora.weight=0", "lora.weight=0.25"]
    with pytest.raises(SpecError, match="the job has no LoRA to weigh"):
        plan_grid(JobSpec("x"), {"x": "lora.weight=0, 1"})


def test_an_option_is_used_where_a_stage_leaves_it_to_the_job_and_else_named(tmp_path):
    flows = {"open": {"stages": [{"kind": "txt2img"}, {"kind": "upscale", "factor": 2, "strength": 0.5, "steps": 4}]}}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"copy": {"source": str(DEMO_FOLDER)}}, "flows": flows,
                                    "routes": {"sketch": {"flow": "open"}}}))
    registry = load_registry(path)
    spec = JobSpec("x", route="sketch", model="copy", steps=3)
    assert overriding(spec, registry, "steps", 3) is None and overriding(spec, registry, "model", "copy") is None
    assert [(s.model, s.steps) for s in resolve_flow(spec, registry).stages] == [("copy", 3), ("copy", 4)]
    assert overriding(JobSpec("x", route="preview", guidance=2.0), registry, "guidance", 2.0) is None
    assert overriding(JobSpec("x", route="final", model="copy"), registry, "model", "copy") == \
        "flow demo-final of route final renders on model demo"
    assert overriding(JobSpec("x", flow="demo-final", loras=(Lora("a.safetensors"),)), registry, "loras", ()) is None


# the command line

def test_diffdeck_flows_lists_flows_and_routes_with_their_rules(tmp_path):
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": {}, "routes": ROUTES}, sort_keys=False))
    result = diffdeck("flows", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "  demo-final: txt2img 20 steps on demo -> upscale x2 method lanczos strength 0.5 12 steps on demo" \
        in result.stdout
    assert "  typography -> model demo (steps 30)" in result.stdout and "when quoted text" in result.stdout
    listed = json.loads(diffdeck("flows", "--json", cwd=tmp_path).stdout)
    assert [f["name"] for f in listed["flows"]] == ["demo-preview", "demo-final"]
    assert {r["name"]: r["when"] for r in listed["routes"]}["texture"]["keywords"] == ["striped", "dotted"]


@pytest.mark.parametrize(("args", "says"), [
    (["render", "x", "--route", "nope"], "route: unknown route 'nope'; routes: auto, preview, final"),
    (["render", "x", "--max-cost", "1"], "--max-cost: caps the cost of a route; give --route"),
    (["render", "x", "--lora", "gone.safetensors:0.5"], "loras[0]: gone.safetensors: no such file"),
    (["render", "x", "--init", "p.png"], "init_image: is used only by a flow whose first stage is img2img"),
    (["grid", "x", "--route", "preview", "--x", "upscale.strength=0.3,0.5"], "has no upscale stage"),
    (["render", "x", "--route", "final", "--model", "nope"], "unknown model 'nope'"),
    (["render", "x", "--route", "preview", "--steps", "3"],
     "--steps: flow demo-preview of route preview sets steps in every stage (8), so --steps would not be used; "
     "leave it out, or render without --route to set it"),
    (["render", "x", "--flow", "demo-final", "--model", "copy"], "--model: flow demo-final renders on model demo"),
    (["render", "x", "--route", "final", "--max-cost", "nan"], "--max-cost: is a number of seconds above 0, got nan"),
    (["render", "x", "--route", "final", "--max-cost", "-1"], "--max-cost: is a number of seconds above 0, got -1"),
    (["grid", "x", "--x", "route=preview,nope"], "route: in the cell route=nope: unknown route 'nope'; routes: auto"),
    (["grid", "x", "--x", "flow=demo-final,nope"], "flow: in the cell flow=nope: unknown flow 'nope'"),
    (["grid", "x", "--route", "preview", "--steps", "3", "--x", "seed=1,2"], "--steps: flow demo-preview of route"),
])
def test_bad_route_options_are_one_line(tmp_path, args, says):
    """One line, nothing before it (a grid's size is said only once its cells are known good)."""
    (tmp_path / "p.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": {"copy": {"source": str(DEMO_FOLDER)}}}))
    one_line_error(diffdeck(*args, cwd=tmp_path), says)


def test_a_refused_second_prompt_leaves_the_first_unqueued_in_the_session(tmp_path):
    said = diffdeck("render", "a red circle", "x" * 10_001, "--session", "s", cwd=tmp_path)
    one_line_error(said, "prompt: is 10,001 characters long")
    assert not (tmp_path / "s").exists() or Session.open(tmp_path / "s").jobs == {}, "nothing to resume later"


@pytest.mark.slow
def test_render_from_a_stage_image_renders_its_flow_up_to_that_stage(tmp_path):
    flows = {"two": {"stages": [{"kind": "txt2img", "steps": 2},
                                {"kind": "upscale", "factor": 2, "strength": 0.5, "steps": 2}]}}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": {}, "flows": flows}))
    made = diffdeck("render", "a red circle", "--flow", "two", "--size", "64x64", "--seed", "4", "--session", "s",
                    cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    stage_image = tmp_path / "s" / "images" / "job-0001-00-4.s0-txt2img.png"
    again = diffdeck("render", "--from", str(stage_image), "--session", "t", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    path = tmp_path / json.loads(again.stdout.splitlines()[-1])["path"]
    assert [s["kind"] for s in read_record(path)["spec"]["stages"]] == ["txt2img"]
    assert file_pixel_sha256(path) == file_pixel_sha256(stage_image), "the stage's image, not the flow's last"


def test_render_from_a_stage_image_a_refine_takes_over_is_refused(tmp_path):
    stages = [{"kind": "txt2img", "model": "xl"}, {"kind": "refine", "model": "xl", "switch": 0.8}]
    info = PngInfo()
    info.add_text("diffdeck", json.dumps({"seed": 1, "stage": 0, "stage_kind": "txt2img",
                                          "spec": JobSpec("x", model="xl", flow="r", stages=()).to_dict()
                                          | {"stages": stages}}))
    Image.new("RGB", (8, 8)).save(tmp_path / "s0.png", pnginfo=info)
    one_line_error(diffdeck("render", "--from", "s0.png", cwd=tmp_path),
                   "s0.png is stage 0 of its flow, stopped at the switch for the refine after it")


@pytest.mark.slow
def test_render_through_a_route_chosen_by_its_rule_records_which_and_why(tmp_path):
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(
        {"models": {"copy": {"source": str(DEMO_FOLDER)}},
         "routes": {"shapes": {"model": "copy", "steps": 2, "when": {"keywords": ["circle"]}}}}))
    result = diffdeck("render", "a red circle", "--route", "auto", "--seed", "1", "--session", "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "job-0001: route shapes, by its rule: the prompt has the keyword 'circle'" in result.stderr
    spec = Session.open(tmp_path / "s", create=False).jobs["job-0001"]["spec"]
    assert (spec["route"], spec["model"], spec["steps"]) == ("shapes", "copy", 2)
    assert spec["routed_by"].startswith("route shapes, by its rule")
