"""The training script end to end, in seconds: a few steps of each stage, then the pipeline it
saves is loaded and rendered by the real engine, with its own preview map; and an autoencoder that
cannot reproduce the scenes stops the run before the UNet."""

import json
import subprocess
import sys

import pytest
from diffdeck.engines.worker.previews import LATENT_RGB_FILE
from helpers import diffdeck


@pytest.mark.slow
def test_a_short_training_run_saves_a_pipeline_the_engine_renders(tmp_path):
    out = tmp_path / "model"
    (out / "stale").mkdir(parents=True)  # an earlier model's leftovers do not survive
    subprocess.run([sys.executable, "-m", "diffdeck.engines.demo.train", "--out", str(out), "--vae-steps", "2",
                    "--unet-steps", "2", "--scenes", "64", "--no-gate"], check=True, capture_output=True, timeout=300)
    assert not (out / "stale").exists()
    assert sorted(p.name for p in out.rglob("*.safetensors")) == [
        "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors", "model.safetensors"]
    preview_map = json.loads((out / LATENT_RGB_FILE).read_text())
    assert len(preview_map["factors"]) == 4 and all(len(row) == 3 for row in preview_map["factors"])

    (tmp_path / "models.yaml").write_text(f"models:\n  mine:\n    source: {out}\n    memory_gb: 0.1\n")
    result = diffdeck("render", "a small red star on a blue background, top", "--model", "mine", "--size", "64x64",
                      "--steps", "2", "--session", "s", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "mine"


@pytest.mark.slow
def test_an_autoencoder_that_misses_the_targets_stops_the_run_before_the_unet(tmp_path, capsys):
    from diffdeck.engines.demo import train  # in this process: a second interpreter's imports cost seconds

    out = tmp_path / "model"
    with pytest.raises(SystemExit) as stopped:
        train.main(["--out", str(out), "--vae-steps", "2", "--unet-steps", "2", "--scenes", "64"])
    assert "the autoencoder's reconstructions miss the targets (colour, background, shape, position)" in str(stopped.value)
    assert "unet step" not in capsys.readouterr().out
    assert not out.exists()


def test_the_loss_weighs_the_shape_its_hole_and_its_surroundings_not_the_far_background():
    """Small rings, stars and crosses came back from an autoencoder as circles while the weight
    covered only the shape's own pixels: the ring's hole is background colour, so it counted for 1."""
    from diffdeck.engines.demo import train
    from diffdeck.engines.demo.shapes import Scene

    x = train.images([Scene("ring", "red", "blue", "small", "centre")], None)
    weights = train.shape_weights(x)[0, 0]
    assert weights[32, 32] == train.SHAPE_WEIGHT  # the hole's centre, background-coloured
    assert weights[32, 32 + 8] == train.SHAPE_WEIGHT  # on the ring (x 23 to 41)
    assert weights[32, 32 + 11] == train.SHAPE_WEIGHT  # 2 px outside it
    assert weights[32, 32 + 16] == weights[2, 2] == 1  # 7 px outside it, and a corner
