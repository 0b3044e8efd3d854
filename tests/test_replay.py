"""`diffdeck replay`: the same jobs, the same seeds, the same pixels, or a precise account."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from diffdeck.engines.core.pixels import pixel_sha256
from diffdeck.engines.record.session import Session
from diffdeck.engines.service.replay import drift_factors
from diffdeck.engines.sets.similarity import Tolerance, compare, dhash, psnr
from helpers import diffdeck
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "sessions" / "examples" / "demo-red-circle"


def this_environment():
    return json.loads(subprocess.run([sys.executable, "-m", "diffdeck.engines.worker.environment"], capture_output=True,
                                     text=True, check=True).stdout)


def change_pixel(path, by):
    """One channel of the top-left pixel moved by `by` (towards the middle of 0..255)."""
    image = Image.open(path).convert("RGB")
    r, g, b = image.getpixel((0, 0))
    image.putpixel((0, 0), (r + by if r < 128 else r - by, g, b))
    image.save(path)
    return image


def test_psnr_and_perceptual_hash(tmp_path):
    base = Image.linear_gradient("L").rotate(90).convert("RGB").resize((64, 64))  # dark to light, left to right
    nudged = base.point(lambda v: min(255, v + 1))
    flipped = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert psnr(base, base) == float("inf")
    assert 47 < psnr(base, nudged) < 49  # every value off by one: MSE 1 -> 48.1 dB
    assert bin(dhash(base) ^ dhash(nudged)).count("1") == 0
    assert bin(dhash(base) ^ dhash(flipped)).count("1") > 20
    for name, image in (("base", base), ("nudged", nudged), ("flipped", flipped)):
        image.save(tmp_path / f"{name}.png")
    loose = Tolerance(min_psnr_db=40)
    assert compare(tmp_path / "base.png", tmp_path / "base.png", loose).kind == "identical"
    assert compare(tmp_path / "base.png", tmp_path / "nudged.png", loose).kind == "near-identical"
    assert compare(tmp_path / "base.png", tmp_path / "flipped.png", loose).kind == "different"
    assert compare(tmp_path / "base.png", tmp_path / "nudged.png", Tolerance()).kind == "different", "48 dB < 60"


def test_near_identical_is_last_bit_noise_not_a_visible_change(tmp_path):
    base = Image.linear_gradient("L").convert("RGB").resize((64, 64))
    base.save(tmp_path / "base.png")
    base.save(tmp_path / "noise.png")
    base.save(tmp_path / "visible.png")
    change_pixel(tmp_path / "noise.png", 1)
    change_pixel(tmp_path / "visible.png", 128)
    noise = compare(tmp_path / "base.png", tmp_path / "noise.png", Tolerance())
    assert (noise.kind, noise.max_difference) == ("near-identical", 1) and noise.psnr_db > 80
    visible = compare(tmp_path / "base.png", tmp_path / "visible.png", Tolerance(min_psnr_db=40))
    assert 40 < visible.psnr_db < 60, "PSNR alone would let one pixel changed by 128 pass at 40 dB"
    assert (visible.kind, visible.max_difference) == ("different", 128)


def test_what_decides_bit_exactness_is_a_drift_factor_and_nothing_else():
    here = {"python": "3.11.7", "versions": {"torch": "2.13.0", "pillow": "13.0.0"}, "cuda": None, "gpus": [],
            "cpu": {"name": "AMD EPYC", "capability": "AVX512", "threads": 1}, "diffdeck": {"commit": "abc"}}
    assert drift_factors(here, here) == []
    cosmetic = {**here, "python": "3.12.1", "versions": {**here["versions"], "pillow": "12.0"},
                "diffdeck": {"commit": "def"}}
    assert drift_factors(cosmetic, here) == []
    assert drift_factors({**here, "cpu": {**here["cpu"], "threads": 2}}, here) == ["cpu.threads: 2 -> 1"]
    assert drift_factors({**here, "versions": {"torch": "2.12.0"}}, here) == ["versions.torch: '2.12.0' -> '2.13.0'"]
    assert drift_factors({k: v for k, v in here.items() if k != "cpu"}, here) == ["CPU not recorded"]
    assert drift_factors(None, here) == ["environment not recorded"]


def git_status(*paths):
    return subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.slow
def test_the_committed_example_replays_identically_where_its_cpu_is_this_one(tmp_path):
    """Identical pixels where nothing that decides bit-exactness differs from the record (the
    CPU it was made on); elsewhere the difference is named first and only last-bit noise passes."""
    before = git_status("sessions")
    result = diffdeck("replay", str(EXAMPLE), "--check", "--json", "--into", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    *images, summary = [json.loads(line) for line in result.stdout.splitlines()]
    summary = summary["summary"]
    recorded = Session.open(EXAMPLE).record["models"]["demo"]["environment"]
    drift = summary["drift_factors"]["demo"]
    cpu_named = any(factor == "CPU not recorded" or factor.startswith("cpu.") for factor in drift)
    assert cpu_named == (recorded.get("cpu") != this_environment()["cpu"])
    verdicts = [image["verdict"] for image in images]
    if drift:
        assert all(v["kind"] == "identical" or (v["kind"] == "near-identical" and v["max_difference"] <= 2
                                                and v["psnr_db"] >= 60) for v in verdicts)
    else:
        assert [v["kind"] for v in verdicts] == ["identical", "identical"]
    assert Path(summary["replay"]) == tmp_path / "out" / "replay-1"
    assert [j["status"] for j in Session.open(tmp_path / "out" / "replay-1").jobs.values()] == ["done"]
    assert git_status("sessions") == before, "the committed session is left as it was"


@pytest.fixture(scope="module")
def made_here(tmp_path_factory):
    """A session rendered on this machine, as it is: its replay here decides nothing by CPU."""
    folder = tmp_path_factory.mktemp("made-here")
    result = diffdeck("render", "a large red circle on a blue background", "--seed", "1", "--count", "2",
                      "--session", "s", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "s"


@pytest.mark.slow
@pytest.mark.parametrize("cpu_name", [None, "Another CPU"], ids=["same-cpu", "other-cpu"])
def test_near_identical_passes_only_when_a_drift_factor_is_named(tmp_path, made_here, cpu_name):
    copy = tmp_path / "s"
    shutil.copytree(made_here, copy)
    record = yaml.safe_load((copy / "session.yaml").read_text())
    image = record["jobs"]["job-0001"]["images"][1]
    image["pixel_sha256"] = pixel_sha256(change_pixel(copy / image["path"], 1))  # as if made with other kernels
    cpu = record["models"]["demo"]["environment"]["cpu"]
    here = cpu["name"]
    if cpu_name:
        cpu["name"] = cpu_name
    (copy / "session.yaml").write_text(yaml.safe_dump(record))
    result = diffdeck("replay", "s", "--check", "--into", "out", cwd=tmp_path)
    lines = result.stdout.splitlines()
    first_image = next(i for i, line in enumerate(lines) if line.startswith("job-0001"))
    assert "image 0 seed 1: identical" in lines[first_image]
    if cpu_name:
        assert lines.index(f"  demo: cpu.name: {cpu_name!r} -> {here!r}") < first_image
        assert "image 1 seed 2: near-identical (PSNR" in lines[first_image + 1]
        assert result.returncode == 0
    else:
        assert "drift factors: none, so only identical pixels pass" in lines[:first_image]
        assert "image 1 seed 2: different (PSNR" in lines[first_image + 1] and "largest difference 1/255" in lines[
            first_image + 1]
        assert result.returncode == 1


@pytest.mark.slow
def test_an_altered_recorded_image_is_reported_altered_whatever_the_render_gives(tmp_path):
    copy = tmp_path / "example"
    shutil.copytree(EXAMPLE, copy)
    change_pixel(copy / Session.open(copy).jobs["job-0001"]["images"][1]["path"], 128)
    result = diffdeck("replay", str(copy), "--check", cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith("job-0001")]
    assert lines[1].startswith("job-0001 image 1 seed 2: altered")
    assert "1 altered" in result.stdout.splitlines()[-1]


@pytest.mark.slow
def test_a_missing_image_is_reported_missing_and_fails_the_check(tmp_path):
    copy = tmp_path / "example"
    shutil.copytree(EXAMPLE, copy)
    (copy / Session.open(copy).jobs["job-0001"]["images"][0]["path"]).unlink()
    result = diffdeck("replay", str(copy), "--check", cwd=tmp_path)
    assert result.returncode == 1 and "image 0 seed 1: missing" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["nowhere"], "nowhere is not a session folder"),
    (["example", "--jobs", "job-0042"], "no finished job 'job-0042'"),
])
def test_bad_replay_input_is_one_line(tmp_path, args, message):
    shutil.copytree(EXAMPLE, tmp_path / "example")
    result = diffdeck("replay", *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("into", ["a-file", "a-file/below"])
def test_a_replay_folder_that_cannot_be_written_is_refused_before_rendering(tmp_path, into):
    shutil.copytree(EXAMPLE, tmp_path / "example")
    (tmp_path / "a-file").write_text("not a folder")
    result = diffdeck("replay", "example", "--check", "--into", into, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("diffdeck: error: ") and "a-file is not a folder" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "example").iterdir()) == sorted(p.name for p in EXAMPLE.iterdir())


def test_sessions_lists_what_is_under_a_folder(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "examples" / "demo")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "session.yaml").write_text("format: 7\njobs: {}\n")
    rows = {Path(r["path"]).name: r for r in json.loads(diffdeck("sessions", str(tmp_path), "--json",
                                                                 cwd=tmp_path).stdout)}
    assert rows["demo"]["jobs"] == 1 and rows["demo"]["images"] == 2 and rows["demo"]["models"] == ["demo"]
    assert "session format 7" in rows["broken"]["problem"]


@pytest.mark.slow
def test_a_changed_scheduler_config_or_weight_file_is_named_before_rendering(tmp_path):
    from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER

    shutil.copytree(DEMO_FOLDER, tmp_path / "mine")
    (tmp_path / "models.yaml").write_text(json.dumps({"models": {"mine": {"source": "./mine",
                                                                        "defaults": DEMO.defaults}}}))
    assert diffdeck("render", "x", "--model", "mine", "--seed", "5", "--session", "s", cwd=tmp_path).returncode == 0
    config_file = tmp_path / "mine" / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "beta_end": 0.02}))
    weights = tmp_path / "mine" / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same bytes, new mtime: the cache must not be fooled
    result = diffdeck("replay", "s", "--check", cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines[0] == "environment: differs from the record:"
    assert "  mine: model.scheduler.beta_end: 0.012 -> 0.02" in lines
    assert not any("weights" in line for line in lines), "identical weights are not reported"
    first_image_line = next(i for i, line in enumerate(lines) if line.startswith("job-0001"))
    assert lines.index("  mine: model.scheduler.beta_end: 0.012 -> 0.02") < first_image_line
    assert result.returncode == 1 and "different" in lines[first_image_line]
