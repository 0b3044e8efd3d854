"""`diffdeck replay`: the same jobs, the same seeds, the same pixels, or a precise account."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engines.compare import compare, dhash, psnr
from engines.session import Session

EXAMPLE = Path(__file__).resolve().parent.parent / "sessions" / "examples" / "demo-red-circle"


def diffdeck(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tui", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


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
    assert compare(tmp_path / "base.png", tmp_path / "base.png", 40, 2).kind == "identical"
    assert compare(tmp_path / "base.png", tmp_path / "nudged.png", 40, 2).kind == "near-identical"
    assert compare(tmp_path / "base.png", tmp_path / "flipped.png", 40, 2).kind == "different"


def test_the_committed_example_replays_with_identical_pixels(tmp_path):
    copy = tmp_path / "example"
    shutil.copytree(EXAMPLE, copy)
    result = diffdeck("replay", str(copy), "--check", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    *images, summary = [json.loads(line) for line in result.stdout.splitlines()]
    assert [i["verdict"]["kind"] for i in images] == ["identical", "identical"]
    assert summary["summary"]["identical"] == 2 and summary["summary"]["replay"].endswith("replay-1")
    replayed = Session.open(copy / "replay-1")
    assert [j["status"] for j in replayed.jobs.values()] == ["done"]
    assert sorted(p.name for p in (copy / "images").iterdir()) == sorted(
        Path(i["path"]).name for i in Session.open(copy).jobs["job-0001"]["images"]), "originals untouched"


def test_a_tampered_image_is_reported_different_and_fails_the_check(tmp_path):
    copy = tmp_path / "example"
    shutil.copytree(EXAMPLE, copy)
    target = copy / Session.open(copy).jobs["job-0001"]["images"][1]["path"]
    image = Image.open(target).convert("RGB")
    image.paste((255, 0, 0), (0, 0, 32, 64))
    image.save(target)
    result = diffdeck("replay", str(copy), "--check", cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith("job-0001")]
    assert "image 0 seed 1: identical" in lines[0] and "image 1 seed 2: different (PSNR" in lines[1]
    assert "1 identical, 1 different" in result.stdout.splitlines()[-1]


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


def test_sessions_lists_what_is_under_a_folder(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "examples" / "demo")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "session.yaml").write_text("format: 7\njobs: {}\n")
    rows = {Path(r["path"]).name: r for r in json.loads(diffdeck("sessions", str(tmp_path), "--json",
                                                                 cwd=tmp_path).stdout)}
    assert rows["demo"]["jobs"] == 1 and rows["demo"]["images"] == 2 and rows["demo"]["models"] == ["demo"]
    assert "session format 7" in rows["broken"]["problem"]


def test_a_changed_scheduler_config_or_weight_file_is_named_before_rendering(tmp_path):
    from engines.registry import DEMO, DEMO_FOLDER

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
