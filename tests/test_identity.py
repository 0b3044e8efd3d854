import hashlib
import json

from diffdeck.engines.core.identity import cache_file, model_identity


def make_model(folder, weights=b"weights"):
    (folder / "unet").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "EulerDiscreteScheduler"}))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    return folder


def test_identity_of_a_local_folder(tmp_path):
    identity = model_identity(make_model(tmp_path / "m"))
    assert identity == {
        "revision": None,
        "pipeline_class": "StableDiffusionPipeline",
        "scheduler": {"_class_name": "EulerDiscreteScheduler"},
        "weights": {"unet/diffusion_pytorch_model.safetensors": hashlib.sha256(b"weights").hexdigest()},
    }
    assert str((tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").resolve()) in json.loads(
        cache_file().read_text())


def test_a_changed_weight_file_changes_the_identity(tmp_path):
    folder = make_model(tmp_path / "m")
    before = model_identity(folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"other weights")
    assert model_identity(folder)["weights"] != before["weights"]


def test_hub_snapshots_are_named_by_commit_and_blob_without_reading_them(tmp_path):
    repo = tmp_path / "models--org--name"
    blob_name = "a" * 64  # a hub blob's name is its SHA-256; the content here does not match on purpose
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / blob_name).write_bytes(b"not what the name says")
    snapshot = make_model(repo / "snapshots" / "0123abcd")
    weights = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    weights.symlink_to(repo / "blobs" / blob_name)
    identity = model_identity(snapshot)
    assert identity["revision"] == "0123abcd"
    assert identity["weights"] == {"unet/diffusion_pytorch_model.safetensors": blob_name}
