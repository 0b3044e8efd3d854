"""`diffdeck` as a user runs it: a real process, real workers, real files."""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.record.png_metadata import read_record
from diffdeck.engines.record.session import Session
from helpers import diffdeck, one_line_error, start, wait_until
from PIL import Image


@pytest.mark.slow
def test_render_prints_one_path_per_image(tmp_path):
    result = diffdeck("render", "a red circle", "--count", "2", "--seed", "5", "--session", "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert [Path(p).name for p in paths] == ["job-0001-00-5.png", "job-0001-01-6.png"]
    assert all((tmp_path / "s" / "images" / Path(p).name).is_file() for p in paths)
    assert read_record(tmp_path / paths[1])["seed"] == 6


@pytest.mark.slow
def test_render_json_and_default_session_folder(tmp_path):
    result = diffdeck("render", "a blue square", "--json", "--steps", "4", "--size", "64x128", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    image = json.loads(line)
    assert image["model"] == "demo" and isinstance(image["seed"], int) and image["peak_memory"] > 0
    assert set(image["timings"]) == {"queue_wait_s", "load_s", "prepare_s", "denoise_s", "decode_s", "save_s",
                                     "total_s"}
    assert (image["route"], image["flow"], image["stages"]) == (None, None, [])
    path = Path(image["path"])
    assert path.parent.parent.parent == Path("sessions") and (tmp_path / path).is_file()
    assert Image.open(tmp_path / path).size == (64, 128)


@pytest.mark.slow
def test_render_json_of_a_route_gives_its_flow_and_the_timings_of_every_stage(tmp_path):
    result = diffdeck("render", "a red circle", "--route", "final", "--size", "64x64", "--seed", "3", "--json",
                      "--session", "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (image,) = map(json.loads, result.stdout.splitlines())
    assert (image["route"], image["flow"], image["model"]) == ("final", "demo-final", "demo")
    stages = image["stages"]
    assert [(s["stage"], s["kind"], s["model"]) for s in stages] == [(0, "txt2img", "demo"), (1, "upscale", "demo")]
    assert stages[1]["path"] == image["path"] and stages[0]["path"].endswith(".s0-txt2img.png")
    work = ("prepare_s", "denoise_s", "decode_s", "save_s")
    assert all(set(s["timings"]) == set(work) for s in stages)
    assert stages[1]["timings"]["prepare_s"] > 0, "the resample and the img2img pipeline are timed"
    (job,) = Session.open(tmp_path / "s", create=False).jobs.values()
    for key in work:
        assert image["timings"][key] == pytest.approx(sum(s["timings"][key] for s in stages), abs=2e-4), key
        assert job["timings"][key] == pytest.approx(image["timings"][key], abs=2e-4), "the job's totals, one image"
    assert image["peak_memory"] == max(s["peak_memory"] for s in stages)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "nope"], "unknown model 'nope' in models.yaml; known models: demo, gone, pickled"),
    (["--size", "65x64"], "width: 65 is not a multiple of 8; try 64 or 72"),
    (["--steps", "0"], "steps: must be a whole number from 1 to 1000, got 0"),
    (["--scheduler", "flow_euler"], "'flow_euler' does not work with SD 1.x/2.x models"),
    (["--models", "missing.yaml"], "models file missing.yaml does not exist"),
    (["--model", "gone"], "model folder"),
    (["--model", "pickled"], "pickle weights, which can run arbitrary code"),
])
def test_bad_input_is_one_clear_line_and_nothing_is_lost(tmp_path, args, message):
    (tmp_path / "pickled" / "unet").mkdir(parents=True)
    (tmp_path / "pickled" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (tmp_path / "pickled" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04")
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(
        {"models": {"gone": {"source": "./gone"}, "pickled": {"source": "./pickled"}}}))
    earlier = tmp_path / "s" / "images" / "earlier.png"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an image rendered earlier")
    models = [] if "--models" in args else ["--models", "models.yaml"]
    result = diffdeck(*models, "render", "a red circle", *args, "--session", "s", cwd=tmp_path)
    stderr = result.stderr
    assert result.returncode == 2
    assert stderr.startswith("diffdeck: error: ") and message in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert [p.name for p in (tmp_path / "s" / "images").iterdir()] == ["earlier.png"]


def test_malformed_models_yaml_names_the_line(tmp_path):
    (tmp_path / "models.yaml").write_text("models:\n  sd:\n    source: [unclosed\n")
    result = diffdeck("render", "x", cwd=tmp_path)
    assert result.returncode == 2
    assert "models.yaml line" in result.stderr and "not valid YAML" in result.stderr


def test_a_prompt_in_the_wrong_encoding_is_named(tmp_path):
    result = diffdeck("render", b"caf\xe9 au lait", cwd=tmp_path, env={"LC_ALL": "C.UTF-8"}, timeout=60)
    assert result.returncode == 2
    assert "prompt: is not valid UTF-8: an undecodable byte at character 3" in result.stderr


@pytest.mark.slow
def test_a_model_that_cannot_load_fails_the_render_with_exit_1(tmp_path):
    (tmp_path / "broken" / "unet").mkdir(parents=True)
    (tmp_path / "broken" / "model_index.json").write_text(
        '{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}')
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": {"broken": {"source": "./broken"}}}))
    result = diffdeck("render", "x", "--model", "broken", cwd=tmp_path)
    assert result.returncode == 1
    assert "could not load model 'broken'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_ctrl_c_cancels_the_running_job(tmp_path):
    """The terminal sends SIGINT to the whole foreground process group, as here."""
    proc = start("render", "slow", "--steps", "1000", "--size", "256x256", cwd=tmp_path, capture=True,
                 start_new_session=True)
    wait_until(lambda: list(tmp_path.glob("sessions/*")), 120, "the worker to make the session folder (rendering)")
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "job-0001 cancelled" in err and out == ""


def test_render_refuses_a_size_far_past_the_model_with_one_line(tmp_path):
    result = diffdeck("render", "a red circle", "--size", "4096x4096", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("diffdeck: error: size: 4096x4096 is 4,096 times the area model 'demo' ")
    assert result.stderr.count("\n") == 1 and "try 1024x1024 or smaller" in result.stderr
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


def test_models_lists_the_registry(tmp_path):
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(
        {"models": {"sd-turbo": {"source": "stabilityai/sd-turbo", "roles": ["preview"]}}}))
    result = diffdeck("models", "--json", cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["demo"]["offline"] is True and rows["demo"]["family"] == "sd"
    assert rows["sd-turbo"]["offline"] is False and "not downloaded" in rows["sd-turbo"]["problem"]
    table = diffdeck("models", cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")}).stdout
    assert "demo" in table and "stabilityai/sd-turbo" in table


def test_doctor_reports_the_machine(tmp_path):
    result = diffdeck("doctor", cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0
    assert "torch 2." in out and "diffusers" in out
    assert "CUDA: not available" in out and "NVML:" in out and "terminal:" in out


@pytest.mark.slow
def test_bench_prints_the_side_by_side_figures(tmp_path):
    result = diffdeck("bench", "-n", "2", "--rounds", "1", cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert re.search(r"round 1: bare [\d.]+ s/image   diffdeck [\d.]+ s/image", out), out
    assert re.search(r"median of paired ratios [+-][\d.]+ %", out), out
    assert re.search(r"outside the worker's render and save .*: [\d.]+ ms/image", out), out
    assert re.search(r"UI-side import of engines \+ diffdeck.tui.cli.main: \d+ ms", out), out


@pytest.mark.slow
def test_render_from_an_image_renders_that_image_again(tmp_path):
    first = diffdeck("render", "a red circle", "--count", "3", "--seed", "40", "--steps", "6", "--session", "a",
                     cwd=tmp_path)
    third = first.stdout.split()[2]
    again = diffdeck("render", "--from", third, "--session", "b", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    (path,) = again.stdout.split()
    assert read_record(tmp_path / path)["seed"] == 42 and read_record(tmp_path / path)["spec"]["steps"] == 6
    assert file_pixel_sha256(tmp_path / path) == file_pixel_sha256(tmp_path / third)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_bytes(b"not an image"), "is not a readable image"),
    (lambda p: Image.new("RGB", (8, 8)).save(p), "has no diffdeck record"),
])
def test_render_from_a_foreign_file_is_one_clear_line(tmp_path, make, message):
    make(tmp_path / "x.png")
    result = diffdeck("render", "--from", "x.png", cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_render_needs_a_prompt_or_an_image(tmp_path):
    result = diffdeck("render", cwd=tmp_path)
    assert result.returncode == 2 and "prompt: is missing" in result.stderr


@pytest.mark.parametrize("args", [["ab", "a red circle", "a blue circle", "--count", "0"],
                                  ["ab", "a red circle", "--vary", "steps=2,3", "--count", "-1"],
                                  ["grid", "a red circle", "--x", "steps=2,3", "--count", "0"]])
def test_a_set_with_a_count_below_one_is_refused_as_render_refuses_it(tmp_path, args):
    one_line_error(diffdeck(*args, "--session", "s", cwd=tmp_path), "count: must be a whole number from 1")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["rendr", "a red circle"], "unknown command 'rendr'; did you mean render?"),
    (["sesions"], "unknown command 'sesions'; did you mean sessions?"),
    (["sessions/2026120-1259"], "no session at sessions/2026120-1259; diffdeck --new sessions/2026120-1259"),
])
def test_a_mistyped_command_or_session_is_refused_and_creates_nothing(tmp_path, args, says):
    (tmp_path / "sessions").mkdir()
    one_line_error(diffdeck(*args, cwd=tmp_path), says)
    assert list((tmp_path / "sessions").iterdir()) == []


def test_the_commands_the_workbench_is_told_apart_from_are_the_parsers():
    """The workbench's start builds only its own parser, telling a command by COMMANDS."""
    import argparse

    from diffdeck.tui.cli.main import COMMANDS, build_parser

    parsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(parsers.choices) == list(COMMANDS)


def test_help_lists_the_workbench_options_too(tmp_path):
    result = diffdeck("--help", cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0
    assert all(option in out for option in ("--images", "--new", "--engine", "--remote", "render", "queue")), out


def test_render_from_an_image_refuses_options_that_would_change_it(tmp_path):
    one_line_error(diffdeck("render", "--from", "x.png", "--steps", "5", "--seed", "3", cwd=tmp_path),
                   "--seed, --steps cannot apply", "renders the image as it was recorded")


def test_a_models_file_without_a_models_section_is_named(tmp_path):
    (tmp_path / "models.yaml").write_text("sd-turbo:\n  source: stabilityai/sd-turbo\n")
    one_line_error(diffdeck("models", cwd=tmp_path), "models.yaml", "'sd-turbo'", "under 'models:'")


def test_an_unquoted_axis_is_told_to_quote_it(tmp_path):
    one_line_error(diffdeck("grid", "a red circle", "--x", "steps=10..30", "step", "5", cwd=tmp_path),
                   "unrecognized arguments: step 5", '--x "steps=10..30 step 5"')


def test_vary_with_the_wrong_number_of_values_counts_in_words(tmp_path):
    one_line_error(diffdeck("ab", "a", "b", "--vary", "steps=4", cwd=tmp_path), "gives 1 value for 2 variants")


def test_sessions_counts_jobs_by_status_and_survives_a_closed_pipe(tmp_path):
    session = Session.open(tmp_path / "sessions" / "s")
    for number, status in enumerate(("queued", "failed", "held"), start=1):
        job = f"job-{number:04d}"
        session.append({"type": "queued", "job": job, "spec": JobSpec(prompt="x", seed=1).to_dict(),
                        "position": 0, "worker_crashes": 0})
        if status != "queued":
            session.append({"type": status, "job": job, "error": "it broke", "kind": "error", "worker_crashes": 0})
    out = diffdeck("sessions", cwd=tmp_path).stdout
    assert "3 jobs (1 queued, 1 failed, 1 held)" in out, out
    rows = json.loads(diffdeck("sessions", "--json", cwd=tmp_path).stdout)
    assert rows[0]["statuses"] == {"queued": 1, "failed": 1, "held": 1}

    proc = start("sessions", "--json", cwd=tmp_path, capture=True)
    proc.stdout.close()  # `| head` that has read all it wants
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in proc.stderr.read()


@pytest.mark.slow
def test_bench_keys_measures_and_reports(tmp_path):
    """The keystroke benchmark's whole path, with a handful of keys rather than hundreds."""
    result = diffdeck("bench", "keys", "--keys", "3", cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert re.search(r"idle: median [\d.]+ ms", out) and re.search(r"busy: median [\d.]+ ms", out), out
    assert re.search(r"busy/idle median ratio [\d.]+ \(the worker rendering at [\d.]+ it/s", out), out


@pytest.mark.slow
def test_a_hub_model_not_in_the_cache_offline_gets_a_short_hint(tmp_path):
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": {"turbo": {"source": "stabilityai/sd-turbo"}}}))
    result = diffdeck("render", "x", "--model", "turbo", "--session", "s", cwd=tmp_path,
                      env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    stderr = result.stderr
    assert result.returncode == 1, stderr
    assert "stabilityai/sd-turbo is not in the hub cache" in stderr and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
