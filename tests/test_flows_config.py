"""Flows in models.yaml (or flows.yaml beside it), resolved at submit, and every flow that cannot
work refused there with the reason, before anything is queued."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from diffdeck.engines.core.flow_checks import file_sha256, flow_problem, resolve_flow
from diffdeck.engines.core.flows import Lora, Stage
from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER, RegistryError, load_registry
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.queue.dispatcher import Dispatcher
from helpers import diffdeck, one_line_error
from safetensors.numpy import save_file

CROSS_LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"  # the demo's first cross-attention
CROSS_KEY = f"unet.{CROSS_LAYER}.lora_{{}}.weight"


def write_config(folder: Path, models: dict | None = None, flows: dict | None = None, routes: dict | None = None,
                 name: str = "models.yaml") -> Path:
    data = {k: v for k, v in (("models", models), ("flows", flows), ("routes", routes)) if v is not None}
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def lora_file(path: Path, width: int, kohya: bool = False) -> Path:
    """A LoRA as its safetensors header shows it: key projections of cross-attention taking `width`."""
    down, up = ((f"lora_unet_{CROSS_LAYER.replace('.', '_')}.lora_{end}.weight" for end in ("down", "up")) if kohya
                else (CROSS_KEY.format("A"), CROSS_KEY.format("B")))
    save_file({down: np.zeros((4, width), np.float32), up: np.zeros((64, 4), np.float32)}, str(path))
    return path


@pytest.fixture(scope="module")
def sdxl_of_8_channels(tmp_path_factory, tiny_models) -> Path:
    import tinypipes

    return tinypipes.save("sdxl", tmp_path_factory.mktemp("tiny8") / "tiny-sdxl8", latent_channels=8)


@pytest.fixture
def flows_registry(tmp_path, tiny_models, sdxl_of_8_channels):
    """The demo and the tiny SDXL, SD3 (and an SDXL of another latent space), with flows over them."""
    copy = tmp_path / "demo-copy"
    shutil.copytree(DEMO_FOLDER, copy)
    tiny = {"steps": 4, "width": 64, "height": 64}
    models = {"demo2": {"source": str(copy), "memory_gb": 0.1, "defaults": {"steps": 6, "guidance": 3.0}},
              "xl": {"source": str(tiny_models["sdxl"]), "defaults": dict(tiny)},
              "xl8": {"source": str(sdxl_of_8_channels), "defaults": dict(tiny)},
              "three": {"source": str(tiny_models["sd3"]), "defaults": dict(tiny)}}
    flows = {
        "two-models": {"stages": [{"kind": "txt2img"}, {"kind": "img2img", "model": "demo2", "strength": 0.4}]},
        "xl-refine": {"stages": [{"kind": "txt2img", "model": "xl"}, {"kind": "refine", "model": "xl", "switch": 0.8}]},
        "xl-cross": {"stages": [{"kind": "txt2img", "model": "xl"}, {"kind": "refine", "model": "xl8", "switch": 0.8}]},
        "sd-refine": {"stages": [{"kind": "txt2img"}, {"kind": "refine", "switch": 0.7}]},
        "big": {"stages": [{"kind": "txt2img"}, {"kind": "upscale", "factor": 4, "strength": 0.3}]},
        "big-tiled": {"stages": [{"kind": "txt2img"}, {"kind": "upscale", "factor": 4, "strength": 0.3, "tile": 64}]},
        "latent-across": {"stages": [{"kind": "txt2img", "model": "xl"},
                                     {"kind": "upscale", "model": "xl8", "factor": 2, "method": "latent", "strength": 0.5}]},
        "from-image": {"stages": [{"kind": "img2img", "strength": 0.6}, {"kind": "upscale", "factor": 2, "strength": 0.5}]},
    }
    return load_registry(write_config(tmp_path, models, flows))


def refusal(registry, spec: JobSpec, budget_gb: float | None = None) -> str:
    """The line a submit refuses `spec` with; nothing is queued and no job number used."""
    dispatcher = Dispatcher(registry, Path("unused"), memory_budget_gb=budget_gb)
    with pytest.raises((SpecError, RegistryError)) as refused:
        dispatcher.submit(spec)
    assert not dispatcher.jobs and not dispatcher.queue
    message = str(refused.value)
    assert "\n" not in message
    return message


# configuration

def test_flows_and_routes_are_read_from_models_yaml_and_from_flows_yaml_beside_it(tmp_path):
    models = write_config(tmp_path, {"other": {"source": str(DEMO_FOLDER)}},
                          {"quick": {"description": "fast", "stages": [{"kind": "txt2img", "steps": 3}]}},
                          {"draft": {"flow": "quick"}})
    write_config(tmp_path, flows={"slow": {"stages": [{"kind": "txt2img", "model": "other", "steps": 30}]}},
                 routes={"final": {"flow": "slow"}}, name="flows.yaml")
    registry = load_registry(models)
    assert {"demo-preview", "demo-final", "quick", "slow"} <= set(registry.flows)
    assert registry.flows["quick"].stages == (Stage("txt2img", steps=3),)
    assert registry.flows["slow"].stages[0].model == "other"
    assert registry.routes["draft"].flow == "quick" and registry.routes["final"].flow == "slow"
    assert registry.routes["preview"].flow == "demo-preview", "a built-in route the files do not name stays"



def test_a_routes_and_a_flows_lora_are_named_relative_to_the_file_that_names_them(tmp_path, monkeypatch):
    (tmp_path / "conf" / "loras").mkdir(parents=True)
    (tmp_path / "conf" / "loras" / "style.safetensors").write_bytes(b"")
    lora = [{"source": "loras/style.safetensors", "weight": 0.5}]
    write_config(tmp_path / "conf", flows={"styled": {"stages": [{"kind": "txt2img", "loras": lora}]}},
                 routes={"styled-route": {"model": "demo", "loras": [dict(lora[0])]}}, name="flows.yaml")
    monkeypatch.chdir(tmp_path)  # elsewhere than the file: a path relative to here would name nothing
    registry = load_registry(write_config(tmp_path / "conf", {"other": {"source": str(DEMO_FOLDER)}}))
    beside = str((tmp_path / "conf" / "loras" / "style.safetensors").resolve())
    assert registry.flows["styled"].stages[0].loras[0].source == beside
    assert registry.routes["styled-route"].fields["loras"][0].source == beside

def test_without_a_models_file_flows_yaml_is_found_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFDECK_MODELS", raising=False)
    write_config(tmp_path, flows={"mine": {"stages": [{"kind": "txt2img", "steps": 2}]}}, name="flows.yaml")
    assert "mine" in load_registry().flows


@pytest.mark.parametrize(("flows", "routes", "says"), [
    ({"x": {"stages": [{"kind": "upscale", "factor": 2, "strength": 0.5}]}}, None,
     "flow 'x': stages[0].kind: a flow starts with txt2img"),
    ({"x": {"stages": [{"kind": "txt2img", "model": "nope"}]}}, None,
     "flow 'x' stages[0]: unknown model 'nope'; known models: demo"),
    ({"x": {"stages": [{"kind": "txt2img", "strength": 0.5}]}}, None,
     "stages[0].strength: does not apply to a txt2img stage"),
    ({"x": {"stages": [{"kind": "upscale2"}]}}, None, "unknown stage kind 'upscale2'"),
    ({"x": {"stages": [{"kind": "txt2img", "stpes": 4}]}}, None, "stages[0].stpes: is not a stage field"),
    ({"x": {"stagse": []}}, None, "flow 'x': expected a mapping with 'stages:'"),
    ({"demo-final": {"stages": [{"kind": "txt2img"}]}}, None, "flow 'demo-final' is defined twice (it is a built-in"),
    (None, {"final": {"flow": "nope"}}, "route 'final': unknown flow 'nope'; flows: demo-preview, demo-final"),
    (None, {"final": {"model": "nope"}}, "route 'final': unknown model 'nope'"),
    (None, {"final": {"steps": 4}}, "routes.final: names no flow and no model"),
    (None, {"final": {"flow": "demo-final", "when": {"regex": "("}}}, "routes.final.when.regex: '(' is not a regular"),
    (None, {"final": {"flow": "demo-final", "steps": 0}}, "routes.final.steps: must be a whole number"),
    (None, {"auto": {"flow": "demo-final"}}, "'auto' is reserved"),
])
def test_a_bad_flow_or_route_is_one_line_naming_file_entry_and_field(tmp_path, flows, routes, says):
    path = write_config(tmp_path, {}, flows, routes)
    with pytest.raises(RegistryError) as refused:
        load_registry(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and says in message and "\n" not in message


def test_a_stray_top_level_key_is_refused_naming_the_sections(tmp_path):
    path = tmp_path / "flows.yaml"
    path.write_text("flow:\n  x: {stages: [{kind: txt2img}]}\n")
    with pytest.raises(RegistryError, match="'flow' is not known; flows go under 'flows:', routes go under 'routes:'"):
        load_registry(write_config(tmp_path, {}))


def test_a_route_defined_in_both_files_is_refused(tmp_path):
    models = write_config(tmp_path, {}, routes={"final": {"flow": "demo-final"}})
    write_config(tmp_path, routes={"final": {"flow": "demo-preview"}}, name="flows.yaml")
    with pytest.raises(RegistryError, match="route 'final' is defined in .*models.yaml too"):
        load_registry(models)


def test_roles_are_the_routes_defaults_and_routes_win_over_them(tmp_path):
    models = {"fast": {"source": str(DEMO_FOLDER), "roles": ["preview"]},
              "good": {"source": str(DEMO_FOLDER), "roles": ["final", "texture"]}}
    registry = load_registry(write_config(tmp_path, models))
    assert (registry.routes["preview"].model, registry.routes["final"].model) == ("fast", "good")
    assert registry.routes["texture"].model == "good" and "role of model good" in registry.routes["texture"].origin
    named = load_registry(write_config(tmp_path, models, routes={"final": {"flow": "demo-final"}}))
    assert named.routes["final"].flow == "demo-final" and named.routes["preview"].model == "fast"


# resolution

def test_the_built_in_final_flow_resolves_every_stage(flows_registry):
    job = resolve_flow(JobSpec("a red circle", flow="demo-final", seed=3), flows_registry)
    base, upscale = job.stages
    assert (base.kind, base.model, base.steps, base.guidance, base.width, base.height) == ("txt2img", "demo", 20, 5.0, 64, 64)
    assert (upscale.steps, upscale.strength, upscale.method, upscale.width, upscale.height) == (12, 0.5, "lanczos", 128, 128)
    assert (job.model, job.steps, job.width) == ("demo", 20, 64), "the job is its first stage"
    assert resolve_flow(job, flows_registry) == job, "a resolved job (a replay) comes back as it is"


def test_a_stage_takes_the_jobs_fields_on_the_same_model_and_its_own_models_defaults_on_another(flows_registry):
    job = resolve_flow(JobSpec("a red circle", flow="two-models", steps=9, guidance=2.5, width=96, height=64),
                       flows_registry)
    first, second = job.stages
    assert (first.model, first.steps, first.guidance) == ("demo", 9, 2.5)
    assert (second.model, second.steps, second.guidance, second.strength) == ("demo2", 6, 3.0, 0.4)
    assert (second.width, second.height) == (96, 64), "img2img renders the size of the image it is given"


def test_an_unknown_flow_names_the_known_ones(flows_registry):
    assert refusal(flows_registry, JobSpec("x", flow="nope")).startswith("unknown flow 'nope'; flows: demo-preview")


def test_a_refine_of_the_same_latent_space_resolves(flows_registry):
    job = resolve_flow(JobSpec("a fox", flow="xl-refine"), flows_registry)
    assert [s.kind for s in job.stages] == ["txt2img", "refine"] and job.stages[1].switch == 0.8


def test_a_refine_of_another_latent_space_is_refused(flows_registry):
    message = refusal(flows_registry, JobSpec("a fox", flow="xl-cross"))
    assert message.startswith("stages[1]: a refine needs the latent space of the stage before it")
    assert "model 'xl' is SDXL, 4 latent channels" in message and "model 'xl8' is SDXL, 8 latent channels" in message


def test_a_refine_on_a_family_that_cannot_hand_over_latents_is_refused(flows_registry):
    message = refusal(flows_registry, JobSpec("a circle", flow="sd-refine"))
    assert message.startswith("stages[1].kind: a refine hands latents over part-way") and "SD 1.x/2.x" in message


def test_a_latent_upscale_from_another_latent_space_is_refused(flows_registry):
    assert refusal(flows_registry, JobSpec("a fox", flow="latent-across")).startswith(
        "stages[1]: a latent upscale needs the latent space of the stage before it")


def test_an_upscale_past_the_largest_side_is_refused(flows_registry):
    message = refusal(flows_registry, JobSpec("a circle", flow="big", width=1280, height=640))
    assert message == ("stages[1].factor: upscales 1280x640 to 5120x2560, past 4096 pixels a side; "
                       "use a smaller factor")


def test_an_upscale_past_the_memory_estimate_is_refused_unless_it_is_tiled(flows_registry):
    message = refusal(flows_registry, JobSpec("a circle", flow="big", width=256, height=256), budget_gb=0.5)
    assert message.startswith("stages[1]: upscale at 1024x1024 needs about ")
    assert message.endswith("give the stage a tile (for example tile: 512) to render it in tiles")
    tiled = Dispatcher(flows_registry, Path("unused"), memory_budget_gb=0.5).submit(
        JobSpec("a circle", flow="big-tiled", width=256, height=256))
    assert (tiled.spec.stages[1].width, tiled.spec.stages[1].tile) == (1024, 64)


def test_a_flow_starting_with_img2img_needs_an_init_png(flows_registry, tmp_path):
    assert refusal(flows_registry, JobSpec("a circle", flow="from-image")).startswith(
        "init_image: the flow starts with img2img, which needs an image")
    (tmp_path / "not.png").write_text("text")
    assert refusal(flows_registry, JobSpec("a circle", flow="from-image", init_image=str(tmp_path / "not.png"))) \
        == f"init_image: {tmp_path / 'not.png'} is not a PNG image"
    assert refusal(flows_registry, JobSpec("a circle", init_image=str(tmp_path / "not.png"))).startswith(
        "init_image: is used only by a flow whose first stage is img2img")
    from PIL import Image
    Image.new("RGB", (64, 64)).save(tmp_path / "preview.png")
    job = resolve_flow(JobSpec("a circle", flow="from-image", init_image=str(tmp_path / "preview.png")), flows_registry)
    assert [(s.kind, s.width) for s in job.stages] == [("img2img", 64), ("upscale", 128)]


def test_an_init_image_is_recorded_absolute_and_hashed_and_a_changed_one_refused(flows_registry, tmp_path,
                                                                                 monkeypatch):
    """As the workbench's promote names it: relative to where diffdeck runs (its session's images)."""
    from PIL import Image
    (tmp_path / "ws" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ws" / "images" / "preview.png")
    monkeypatch.chdir(tmp_path)
    job = resolve_flow(JobSpec("a circle", flow="from-image", init_image="ws/images/preview.png"), flows_registry)
    assert job.init_image == str(tmp_path / "ws" / "images" / "preview.png")
    assert job.init_sha256 == file_sha256(tmp_path / "ws" / "images" / "preview.png")
    monkeypatch.chdir(tmp_path / "ws")  # a replay or resume from another folder reads the same file
    assert resolve_flow(JobSpec.from_dict(job.to_dict()), flows_registry).init_sha256 == job.init_sha256
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "ws" / "images" / "preview.png")
    assert refusal(flows_registry, job).startswith(
        f"init_image: the init image {job.init_image} changed since it was recorded (its sha256 is now ")


@pytest.mark.slow
def test_replay_says_the_init_image_changed_since_it_was_recorded(tmp_path):
    from PIL import Image
    Image.new("RGB", (64, 64), "red").save(tmp_path / "start.png")
    flows = {"polish": {"stages": [{"kind": "img2img", "strength": 0.5, "steps": 2}]}}
    models = str(write_config(tmp_path, flows=flows))
    made = diffdeck("render", "a red circle", "--models", models, "--flow", "polish", "--init", "start.png",
                    "--size", "64x64", "--session", "s", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "start.png")
    one_line_error(diffdeck("replay", str(tmp_path / "s"), "--check", "--models", models, cwd=elsewhere),
                   f"init_image: the init image {tmp_path / 'start.png'} changed since it was recorded")


def test_flows_that_cannot_render_are_named_by_diffdeck_flows(flows_registry):
    assert flow_problem("xl-refine", flows_registry) is None and flow_problem("from-image", flows_registry) is None
    assert "latent space" in flow_problem("xl-cross", flows_registry)


# LoRA

def test_a_lora_is_checked_hashed_and_named_by_its_file(flows_registry, tmp_path):
    path = lora_file(tmp_path / "striped.safetensors", DEMO_WIDTH)
    job = resolve_flow(JobSpec("a striped circle", loras=(Lora(str(path), 0.5),)), flows_registry)
    (lora,) = job.loras
    assert (lora.name, lora.weight, lora.sha256) == ("striped", 0.5, file_sha256(path))
    flow_job = resolve_flow(JobSpec("a striped circle", flow="demo-final", loras=(Lora(str(path)),)), flows_registry)
    assert all(stage.loras[0].sha256 == lora.sha256 for stage in flow_job.stages), "every stage takes the job's LoRAs"


DEMO_WIDTH = json.loads((DEMO_FOLDER / "unet" / "config.json").read_text())["cross_attention_dim"]


@pytest.mark.parametrize("kohya", [False, True])
def test_a_lora_for_another_family_is_refused(flows_registry, tmp_path, kohya):
    path = lora_file(tmp_path / "xl-style.safetensors", 2048, kohya)
    message = refusal(flows_registry, JobSpec("a circle", loras=(Lora(str(path)),)))
    assert message == (f"loras[0]: xl-style.safetensors is not a LoRA for demo: 1 of its 1 layer does not fit "
                       f"(first: unet.{CROSS_LAYER}: 2048 inputs, the model's has {DEMO_WIDTH})")
    if not kohya:  # kohya's lora_unet_ names the denoiser, which in SD3 is a transformer of other names
        assert refusal(flows_registry, JobSpec("a fox", model="three", loras=(Lora(str(path)),))).endswith(
            f"(first: unet.{CROSS_LAYER}: the model has no unet)")


def test_a_missing_or_pickled_lora_is_refused(flows_registry, tmp_path):
    assert refusal(flows_registry, JobSpec("x", loras=(Lora(str(tmp_path / "gone.safetensors")),))).startswith(
        f"loras[0]: {tmp_path / 'gone.safetensors'}: no such file")
    (tmp_path / "old.ckpt").write_bytes(b"\x80\x04")
    assert "is not a .safetensors file" in refusal(flows_registry, JobSpec("x", loras=(Lora(str(tmp_path / "old.ckpt")),)))
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    assert "header is not JSON" in refusal(flows_registry, JobSpec("x", loras=(Lora(str(tmp_path / "bad.safetensors")),)))


def test_a_hub_lora_is_found_in_the_hub_cache_and_keeps_its_hub_name(flows_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--striped"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    path = lora_file(repo / "snapshots" / "abc123" / "pytorch_lora_weights.safetensors", DEMO_WIDTH)
    (lora,) = resolve_flow(JobSpec("x", loras=(Lora("org/striped", 0.8),)), flows_registry).loras
    assert (lora.source, lora.name, lora.sha256) == ("org/striped", "striped", file_sha256(path))
    assert "nor a downloaded hub adapter" in refusal(flows_registry, JobSpec("x", loras=(Lora("org/other"),)))


def test_a_lora_changed_since_it_was_recorded_is_refused(flows_registry, tmp_path):
    path = lora_file(tmp_path / "a.safetensors", DEMO_WIDTH)
    recorded = resolve_flow(JobSpec("x", loras=(Lora(str(path)),)), flows_registry)
    lora_file(path, DEMO_WIDTH, kohya=True)
    assert "has changed since it was recorded" in refusal(flows_registry, recorded)


@pytest.fixture(scope="module")
def made_loras(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """LoRAs as diffusers writes them (unet....lora.down.weight), for the demo's UNet and the tiny SDXL's."""
    import tinypipes

    folder = tmp_path_factory.mktemp("loras")
    return {"demo": tinypipes.save_lora(DEMO_FOLDER / "unet", folder / "demo-lora.safetensors"),
            "xl": tinypipes.save_lora(tiny_models["sdxl"] / "unet", folder / "sdxl-lora.safetensors")}


def test_a_lora_is_refused_where_its_layers_are_not_the_models(flows_registry, made_loras):
    """The tiny SDXL's cross-attention is as wide as the demo's: only its layers tell them apart."""
    for model, fits in (("demo", "demo"), ("xl", "xl")):
        resolve_flow(JobSpec("x", model=model, loras=(Lora(str(made_loras[fits])),)), flows_registry)
    message = refusal(flows_registry, JobSpec("x", loras=(Lora(str(made_loras["xl"])),)))
    assert message.startswith("loras[0]: sdxl-lora.safetensors is not a LoRA for demo: ")
    assert " layers do not fit (first: unet.down_blocks." in message
    stage = Stage("txt2img", model="three", loras=(Lora(str(made_loras["demo"])),))
    assert refusal(flows_registry, JobSpec("x", stages=(stage,))).startswith(
        "stages[0].loras[0]: demo-lora.safetensors is not a LoRA for three: ")
    assert "the model has no unet)" in refusal(flows_registry, JobSpec("x", stages=(stage,)))


def test_a_weights_file_given_as_a_lora_is_refused(flows_registry):
    weights = DEMO_FOLDER / "unet" / "diffusion_pytorch_model.safetensors"
    assert refusal(flows_registry, JobSpec("x", loras=(Lora(str(weights)),))).startswith(
        "loras[0]: diffusion_pytorch_model.safetensors has no LoRA weights")


TEXT_LAYER = "text_model_encoder_layers_0_self_attn_q_proj"  # kohya's name of a CLIP layer


def kohya_file(path: Path, tensors: dict[str, tuple[int, int]]) -> Path:
    save_file({name: np.zeros(shape, np.float32) for name, shape in tensors.items()}, str(path))
    return path


def test_kohya_and_text_encoder_layers_are_checked_too(flows_registry, tmp_path):
    fits = kohya_file(tmp_path / "te.safetensors", {f"lora_te_{TEXT_LAYER}.lora_down.weight": (4, DEMO_WIDTH),
                                                   f"lora_te_{TEXT_LAYER}.lora_up.weight": (DEMO_WIDTH, 4),
                                                   f"lora_te_{TEXT_LAYER}.alpha": (1, 1)})
    resolve_flow(JobSpec("x", loras=(Lora(str(fits)),)), flows_registry)
    wide = kohya_file(tmp_path / "wide.safetensors", {f"lora_te_{TEXT_LAYER}.lora_up.weight": (768, 4)})
    assert refusal(flows_registry, JobSpec("x", loras=(Lora(str(wide)),))).endswith(
        f"(first: text_encoder.encoder.layers.0.self_attn.q_proj: 768 outputs, the model's has {DEMO_WIDTH})")
    second = kohya_file(tmp_path / "te2.safetensors", {f"lora_te2_{TEXT_LAYER}.lora_down.weight": (4, DEMO_WIDTH)})
    assert refusal(flows_registry, JobSpec("x", loras=(Lora(str(second)),))).endswith(
        "the model has no text_encoder_2)")
    # kohya's SDXL block names are another naming of the UNet: left for the worker to find out
    other = kohya_file(tmp_path / "sgm.safetensors",
                       {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048)})
    resolve_flow(JobSpec("x", loras=(Lora(str(other)),)), flows_registry)


def test_a_lora_rewritten_in_place_is_checked_again(flows_registry, tmp_path):
    path = lora_file(tmp_path / "style.safetensors", DEMO_WIDTH)
    resolve_flow(JobSpec("x", loras=(Lora(str(path)),)), flows_registry)
    lora_file(path, 2048)
    assert "2048 inputs" in refusal(flows_registry, JobSpec("x", loras=(Lora(str(path)),)))


def test_diffdeck_flows_names_a_flow_whose_lora_does_not_fit(tmp_path, made_loras):
    flows = {"xl-style": {"stages": [{"kind": "txt2img", "loras": [f"{made_loras['xl']}:0.5"]}]}}
    result = diffdeck("flows", "--json", "--models", str(write_config(tmp_path, flows=flows)), cwd=tmp_path)
    problems = {flow["name"]: flow["problem"] for flow in json.loads(result.stdout)["flows"]}
    assert problems["xl-style"].startswith("stages[0].loras[0]: sdxl-lora.safetensors is not a LoRA for demo")


def test_a_stage_lora_for_another_family_names_the_stage(flows_registry, tmp_path):
    path = lora_file(tmp_path / "xl-style.safetensors", 2048)
    flow = flows_registry.flows["two-models"]
    stages = (flow.stages[0], dataclasses.replace(flow.stages[1], loras=(Lora(str(path)),)))
    assert refusal(flows_registry, JobSpec("x", stages=stages)).startswith(
        "stages[1].loras[0]: xl-style.safetensors is not a LoRA for demo2")


def test_a_refusal_at_submit_is_one_line_from_the_command_line(tmp_path):
    lora = lora_file(tmp_path / "big.safetensors", 2048)
    result = diffdeck("render", "a red circle", "--flow", "demo-final", "--lora", f"{lora}:0.7", cwd=tmp_path)
    one_line_error(result, "loras[0]: big.safetensors is not a LoRA for demo: 1 of its 1 layer")
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").rglob("*.png"))
    one_line_error(diffdeck("render", "x", "--flow", "nope", cwd=tmp_path), "unknown flow 'nope'; flows: demo-preview")
    one_line_error(diffdeck("render", "x", "--route", "final", "--flow", "demo-final", cwd=tmp_path),
                   "--flow: give --route or --flow, not both")


def test_the_demo_model_keeps_a_speed_to_estimate_from():
    assert DEMO.seconds_per_step and DEMO.seconds_per_step < 0.1


def test_the_shipped_example_flows_and_routes_load():
    registry = load_registry(Path(__file__).resolve().parent.parent / "models.example.yaml")
    assert {"sdxl-hires", "turbo-then-sdxl", "sdxl-promote"} <= set(registry.flows)
    assert registry.routes["final"].flow == "sdxl-hires" and registry.routes["typography"].when.quoted
    job = resolve_flow(JobSpec("a fox", route="final"), registry)
    assert [(s.kind, s.model) for s in job.stages] == [("txt2img", "sdxl"), ("upscale", "sdxl")], \
        "a stage that names no model renders on the flow's first model, not on the job's default"


def test_a_built_in_lora_is_named_and_recorded_by_name_so_its_sessions_replay_from_any_checkout(flows_registry, tmp_path,
                                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here
    (lora,) = resolve_flow(JobSpec("a striped red star", loras=(Lora.from_dict("striped:0.75"),)), flows_registry).loras
    shipped = DEMO_FOLDER.parent / "demo" / "loras" / "striped.safetensors"
    assert (lora.source, lora.weight, lora.sha256) == ("striped", 0.75, file_sha256(shipped))
    assert refusal(flows_registry, JobSpec("x", loras=(Lora("stripy"),))).endswith("nor a built-in adapter (striped)")


def test_loras_named_in_the_prompt_as_a1111_writes_them_are_the_jobs(flows_registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = resolve_flow(JobSpec("a striped red star <lora:striped:0.75>, top"), flows_registry)
    shipped = DEMO_FOLDER.parent / "demo" / "loras" / "striped.safetensors"
    assert job.prompt == "a striped red star, top", "the tag is taken out of what the text encoder reads"
    assert [(lora.source, lora.weight, lora.sha256) for lora in job.loras] == [("striped", 0.75, file_sha256(shipped))]
    assert resolve_flow(job, flows_registry) == job, "a resolved job (a replay) stays as it is"
    assert refusal(flows_registry, JobSpec("a star <lora:stripy>")).startswith("loras[0]: stripy: no such file")
