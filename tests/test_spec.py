import json

import pytest
from diffdeck.engines.core.spec import MAX_COUNT, MAX_SIDE, SEED_RANGE, JobSpec, SpecError, parse_size

SD_DEFAULTS = {"steps": 25, "guidance": 7.0, "width": 512, "height": 512}
FLUX_DEFAULTS = {"steps": 28, "guidance": 3.5, "width": 1024, "height": 1024}


def spec_error(spec: JobSpec) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec.validate()
    return info.value


def test_a_plain_spec_is_valid():
    JobSpec(prompt="a lighthouse at dusk", seed=0, steps=1, width=8, height=MAX_SIDE, count=MAX_COUNT).validate()


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_is_refused(prompt):
    err = spec_error(JobSpec(prompt=prompt))
    assert err.field == "prompt"
    assert "empty" in err.message


@pytest.mark.parametrize(("field", "value", "neighbours"), [
    ("width", 513, ("512", "520")),
    ("height", 100, ("96", "104")),
    ("width", 12, ("8", "16")),
])
def test_size_not_a_multiple_of_8_suggests_neighbours(field, value, neighbours):
    err = spec_error(JobSpec(prompt="x", **{field: value}))
    assert err.field == field
    assert "multiple of 8" in err.message
    for n in neighbours:
        assert n in err.message


@pytest.mark.parametrize("width", [0, -8, MAX_SIDE + 8])
def test_width_out_of_range_is_refused(width):
    err = spec_error(JobSpec(prompt="x", width=width))
    assert err.field == "width"
    assert f"8 to {MAX_SIDE}" in err.message
    assert str(width) in err.message


@pytest.mark.parametrize("steps", [0, -1])
def test_steps_must_be_positive(steps):
    err = spec_error(JobSpec(prompt="x", steps=steps))
    assert err.field == "steps"
    assert f"got {steps}" in err.message


@pytest.mark.parametrize("count", [0, MAX_COUNT + 1])
def test_count_out_of_range_is_refused(count):
    err = spec_error(JobSpec(prompt="x", count=count))
    assert err.field == "count"
    assert f"1 to {MAX_COUNT}" in err.message


@pytest.mark.parametrize("seed", [-1, SEED_RANGE])
def test_seed_out_of_range_is_refused(seed):
    err = spec_error(JobSpec(prompt="x", seed=seed))
    assert err.field == "seed"
    assert str(SEED_RANGE - 1) in err.message


@pytest.mark.parametrize("field", ["steps", "count", "seed", "width"])
def test_bool_is_not_accepted_as_int(field):
    err = spec_error(JobSpec(prompt="x", **{field: True}))
    assert err.field == field
    assert "True" in err.message


def test_unknown_scheduler_lists_known_names():
    err = spec_error(JobSpec(prompt="x", scheduler="euler_b"))
    assert err.field == "scheduler"
    assert "'euler_b'" in err.message
    for name in ("default", "euler", "euler_a", "dpmpp_2m_karras", "flow_euler"):
        assert name in err.message


def test_flow_scheduler_on_sd_is_refused_by_resolved():
    spec = JobSpec(prompt="x", scheduler="flow_euler")
    spec.validate()
    with pytest.raises(SpecError) as info:
        spec.resolved(SD_DEFAULTS, "sd", (1,))
    err = info.value
    assert err.field == "scheduler"
    assert "SD 1.x/2.x" in err.message
    fits = err.message.split("use one of:")[1]
    assert "euler_a" in fits and "dpmpp_2m" in fits
    assert "flow_" not in fits


def test_eps_scheduler_on_flux_is_refused_by_resolved():
    with pytest.raises(SpecError) as info:
        JobSpec(prompt="x", scheduler="euler").resolved(FLUX_DEFAULTS, "flux", (1,))
    err = info.value
    assert err.field == "scheduler"
    assert "Flux" in err.message
    fits = [n.strip() for n in err.message.split("use one of:")[1].split(",")]
    assert fits == ["default", "flow_euler"], "Flux cannot take flow_heun: FluxPipeline passes sigmas it refuses"


def test_flux_refuses_a_negative_prompt():
    with pytest.raises(SpecError) as info:
        JobSpec(prompt="x", negative_prompt="blurry").resolved(FLUX_DEFAULTS, "flux", (1,))
    assert info.value.field == "negative_prompt"
    assert "Flux" in info.value.message


def test_flux_needs_sizes_that_are_multiples_of_16():
    with pytest.raises(SpecError) as info:
        JobSpec(prompt="x", width=1000).resolved(FLUX_DEFAULTS, "flux", (1,))
    assert info.value.field == "size"
    assert "16" in info.value.message


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_undecodable_argv_bytes_are_refused_as_not_utf8(field):
    text = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert text == "caf\udce9"
    kwargs = {"prompt": "x", field: text}
    err = spec_error(JobSpec(**kwargs))
    assert err.field == field
    assert "not valid UTF-8" in err.message
    assert "character 3" in err.message


def test_non_ascii_prompt_is_fine():
    JobSpec(prompt="café ☕ 東京").validate()


def test_parse_size_is_width_first():
    assert parse_size("512x768") == (512, 768)
    assert parse_size("1024 X 640") == (1024, 640)


@pytest.mark.parametrize("text", ["512", "axb", "512x", "512x768x2", "-512x512", "", "\u00b2x8"])
def test_parse_size_refuses_other_shapes(text):
    with pytest.raises(SpecError) as info:
        parse_size(text)
    assert info.value.field == "size"
    assert "WIDTHxHEIGHT" in info.value.message


def test_resolved_fills_only_what_the_spec_left_unset():
    spec = JobSpec(prompt="x", steps=5, height=768, count=2)
    job = spec.resolved(SD_DEFAULTS, "sd", (10, 11))
    assert (job.steps, job.guidance, job.width, job.height) == (5, 7.0, 512, 768)
    assert job.seed == 10
    assert job.seeds == (10, 11)
    assert spec.steps == 5 and spec.guidance is None and spec.seeds is None


def test_resolved_keeps_an_explicit_zero_guidance():
    job = JobSpec(prompt="x", guidance=0.0).resolved(SD_DEFAULTS, "sd", (1,))
    assert job.guidance == 0.0


def test_resolved_needs_one_seed_per_image():
    with pytest.raises(SpecError) as info:
        JobSpec(prompt="x", count=3).resolved(SD_DEFAULTS, "sd", (1, 2))
    assert info.value.field == "seeds"
    assert "2 seeds for a count of 3" in info.value.message


def test_resolved_revalidates_filled_defaults():
    with pytest.raises(SpecError) as info:
        JobSpec(prompt="x").resolved({**SD_DEFAULTS, "width": 500}, "sd", (1,))
    assert info.value.field == "width"


def test_to_dict_from_dict_round_trip_through_json():
    spec = JobSpec(prompt="a cat", model="sd15", negative_prompt="dog", seed=7, seeds=(7, 8),
                   steps=30, guidance=6.5, width=640, height=448, scheduler="dpmpp_2m_karras",
                   count=2, group="A")
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["seeds"] == [7, 8]
    assert JobSpec.from_dict(data) == spec


def test_to_dict_from_dict_round_trip_with_unset_fields():
    spec = JobSpec(prompt="x")
    assert JobSpec.from_dict(spec.to_dict()) == spec


def test_from_dict_names_an_unknown_key():
    with pytest.raises(SpecError) as info:
        JobSpec.from_dict({"prompt": "x", "colour": "red"})
    assert info.value.field == "colour"
    assert "not a job field" in info.value.message
    assert "negative_prompt" in info.value.message
