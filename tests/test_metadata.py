import json

import pytest
from diffdeck.engines import __version__
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.record.png_metadata import a1111_parameters, parse_parameters, png_info, read_record
from PIL import Image

EULER_A = {"class": "EulerAncestralDiscreteScheduler",
           "config": {"num_train_timesteps": 1000, "timestep_spacing": "leading"}}
DPM_KARRAS = {"class": "DPMSolverMultistepScheduler",
              "config": {"num_train_timesteps": 1000, "use_karras_sigmas": True}}


def make_record(prompt="a lighthouse at dusk", negative="blurry, lowres", model_name="sd15",
                scheduler=EULER_A, revision=None, index=0):
    spec = JobSpec(prompt=prompt, model=model_name, negative_prompt=negative, steps=20, guidance=7.0,
                   width=512, height=768, count=2)
    spec = spec.resolved({"steps": 25, "guidance": 7.5, "width": 512, "height": 512}, "sd", (1234, 1235))
    return {
        "format": 1,
        "job": "j-0001",
        "image": index,
        "seed": spec.seeds[index],
        "rng": "cpu",
        "spec": spec.to_dict(),
        "model": {
            "name": model_name, "source": "/models/sd15", "revision": revision, "family": "sd",
            "pipeline_class": "StableDiffusionPipeline", "dtype": "float16", "device": "cuda",
            "offload": "none", "scheduler": scheduler,
        },
        "diffdeck": __version__,
    }


def test_parameters_have_prompt_negative_and_settings_lines():
    lines = a1111_parameters(make_record()).split("\n")
    assert lines == [
        "a lighthouse at dusk",
        "Negative prompt: blurry, lowres",
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x768, Model: sd15, "
        f"Version: diffdeck {__version__}",
    ]


def test_settings_use_the_seed_of_that_image():
    settings = a1111_parameters(make_record(index=1)).split("\n")[-1]
    assert "Seed: 1235," in settings


def test_karras_config_adds_schedule_type_after_sampler():
    settings = a1111_parameters(make_record(scheduler=DPM_KARRAS)).split("\n")[-1]
    assert settings.startswith("Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7,")


def test_no_schedule_type_without_karras():
    assert "Schedule type" not in a1111_parameters(make_record())


def test_empty_negative_prompt_has_no_line():
    lines = a1111_parameters(make_record(negative="")).split("\n")
    assert len(lines) == 2
    assert lines[0] == "a lighthouse at dusk"
    assert lines[1].startswith("Steps: 20,")


def test_revision_becomes_model_hash():
    settings = a1111_parameters(make_record(revision="0123456789abcdef")).split("\n")[-1]
    assert "Model hash: 0123456789, Model: sd15," in settings


def test_unknown_scheduler_class_is_named_as_is():
    record = make_record(scheduler={"class": "TCDScheduler", "config": {}})
    assert "Sampler: TCDScheduler," in a1111_parameters(record)


@pytest.mark.parametrize("name", ["sd15, fp16", "civitai:12345", 'the "best" one'])
def test_model_name_with_separator_is_json_quoted(name):
    settings = a1111_parameters(make_record(model_name=name)).split("\n")[-1]
    assert f"Model: {json.dumps(name)}, Version:" in settings
    assert parse_parameters(a1111_parameters(make_record(model_name=name)))["Model"] == name


@pytest.mark.parametrize(("prompt", "negative"), [
    ("a lighthouse at dusk", "blurry, lowres"),
    ("a lighthouse\nat dusk\n\noil on canvas", "blurry\nlowres"),
    ("café ☕, 東京", ""),
    ("style: noir, mood: grim, light: low", "text: any"),
])
def test_parse_parameters_round_trip(prompt, negative):
    record = make_record(prompt=prompt, negative=negative, model_name="juggernaut-xl")
    parsed = parse_parameters(a1111_parameters(record))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    assert parsed["Steps"] == "20"
    assert parsed["Seed"] == "1234"
    assert parsed["Size"] == "512x768"
    assert parsed["Sampler"] == "Euler a"
    assert parsed["CFG scale"] == "7"
    assert parsed["Model"] == "juggernaut-xl"


def test_parse_parameters_round_trip_karras():
    parsed = parse_parameters(a1111_parameters(make_record(scheduler=DPM_KARRAS)))
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"


def test_parse_parameters_without_settings_is_all_prompt():
    assert parse_parameters("just a prompt") == {"Prompt": "just a prompt", "Negative prompt": ""}


@pytest.mark.parametrize("prompt", ["a lighthouse at dusk", "café ☕\n東京の夜"])
def test_png_carries_record_and_parameters(tmp_path, prompt):
    record = make_record(prompt=prompt, scheduler=DPM_KARRAS, revision="abcdef0123456789")
    path = tmp_path / "image.png"
    Image.new("RGB", (16, 24), (200, 80, 40)).save(path, format="PNG", pnginfo=png_info(record))

    assert read_record(path) == record
    with Image.open(path) as image:
        assert image.size == (16, 24)
        assert image.text["parameters"] == a1111_parameters(record)
        assert json.loads(image.text["diffdeck"])["spec"]["prompt"] == prompt
