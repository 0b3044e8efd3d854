import json
from pathlib import Path

import pytest
from diffdeck.engines.core.registry import (
    DEMO_FOLDER,
    RegistryError,
    find_models_file,
    load_registry,
    parse_models_file,
)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """An empty working dir, config dir and hub cache, and no $DIFFDECK_MODELS."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("DIFFDECK_MODELS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HOME", raising=False)
    return work


def write_models(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


def one_model(path: Path, name: str, source: str = "org/name", extra: str = "") -> Path:
    return write_models(path, f"models:\n  {name}:\n    source: {source}\n{extra}")


def fake_pipeline(folder: Path, class_name: str, components=("unet", "vae", "text_encoder")) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    for c in components:
        (folder / c).mkdir()
    return folder


def registry_for(tmp_path: Path, source: Path | str, extra: str = ""):
    path = one_model(tmp_path / "models.yaml", "m", str(source), extra)
    return load_registry(path)


class TestLookupOrder:
    @pytest.fixture
    def everywhere(self, tmp_path, isolated, monkeypatch):
        files = {
            "explicit": one_model(tmp_path / "explicit.yaml", "from_explicit"),
            "env": one_model(tmp_path / "env.yaml", "from_env"),
            "cwd": one_model(isolated / "models.yaml", "from_cwd"),
            "user": one_model(tmp_path / "config" / "diffdeck" / "models.yaml", "from_user"),
        }
        monkeypatch.setenv("DIFFDECK_MODELS", str(files["env"]))
        return files

    def test_explicit_file_wins(self, everywhere):
        reg = load_registry(everywhere["explicit"])
        assert reg.path == everywhere["explicit"]
        assert set(reg.models) == {"demo", "from_explicit"}

    def test_env_beats_working_dir(self, everywhere):
        assert set(load_registry().models) == {"demo", "from_env"}

    def test_working_dir_beats_user_config(self, everywhere, monkeypatch):
        monkeypatch.delenv("DIFFDECK_MODELS")
        assert set(load_registry().models) == {"demo", "from_cwd"}

    def test_user_config_is_last(self, everywhere, monkeypatch):
        monkeypatch.delenv("DIFFDECK_MODELS")
        everywhere["cwd"].unlink()
        reg = load_registry()
        assert reg.path == everywhere["user"]
        assert set(reg.models) == {"demo", "from_user"}

    def test_no_file_anywhere_gives_just_demo(self):
        assert find_models_file() is None
        reg = load_registry()
        assert reg.path is None
        assert list(reg.models) == ["demo"]

    def test_missing_explicit_file_is_an_error_even_with_others_present(self, everywhere, tmp_path):
        missing = tmp_path / "nope.yaml"
        with pytest.raises(RegistryError, match="does not exist") as info:
            load_registry(missing)
        assert str(missing) in str(info.value)

    def test_missing_env_file_is_an_error(self, everywhere, tmp_path, monkeypatch):
        missing = tmp_path / "gone.yaml"
        monkeypatch.setenv("DIFFDECK_MODELS", str(missing))
        with pytest.raises(RegistryError, match="does not exist") as info:
            load_registry()
        assert str(missing) in str(info.value)


class TestDemo:
    def test_demo_is_always_there_and_loadable(self):
        reg = load_registry()
        files = reg.files("demo")
        assert files.available
        assert files.problem is None
        assert files.folder == DEMO_FOLDER
        assert files.family == "sd"
        assert files.pipeline_class == "StableDiffusionPipeline"

    def test_demo_survives_a_models_file(self, tmp_path):
        reg = load_registry(one_model(tmp_path / "models.yaml", "other"))
        assert reg.files("demo").available

    def test_demo_name_is_reserved(self, tmp_path):
        path = one_model(tmp_path / "models.yaml", "demo")
        with pytest.raises(RegistryError, match="reserved"):
            load_registry(path)


class TestParsing:
    def test_malformed_yaml_names_file_and_line(self, tmp_path):
        path = write_models(tmp_path / "models.yaml",
                            "models:\n  a:\n    source: org/a\n  b:\n\tsource: org/b\n")
        with pytest.raises(RegistryError) as info:
            parse_models_file(path)
        message = str(info.value)
        assert message.startswith(f"{path} line 5: not valid YAML")
        assert "'\\t'" in message

    def test_bad_indentation_reports_its_line(self, tmp_path):
        path = write_models(tmp_path / "models.yaml", "models:\n  a:\n    source: org/a\n   dtype: float16\n")
        with pytest.raises(RegistryError, match=r"models\.yaml line 4: not valid YAML"):
            parse_models_file(path)

    def test_unknown_entry_key(self, tmp_path):
        path = one_model(tmp_path / "models.yaml", "m", extra="    steps: 20\n")
        with pytest.raises(RegistryError) as info:
            parse_models_file(path)
        assert "unknown key 'steps'" in str(info.value)
        assert "'m'" in str(info.value)
        assert "defaults" in str(info.value)

    def test_missing_source(self, tmp_path):
        path = write_models(tmp_path / "models.yaml", "models:\n  m:\n    dtype: float16\n")
        with pytest.raises(RegistryError, match="'source:' is missing"):
            parse_models_file(path)

    @pytest.mark.parametrize(("key", "value", "allowed"), [
        ("dtype", "float8", "bfloat16"),
        ("offload", "cpu", "sequential"),
        ("device", "tpu", "cuda"),
    ])
    def test_bad_enumerated_value(self, tmp_path, key, value, allowed):
        path = one_model(tmp_path / "models.yaml", "m", extra=f"    {key}: {value}\n")
        with pytest.raises(RegistryError) as info:
            parse_models_file(path)
        assert f"{key} '{value}' is not one of" in str(info.value)
        assert allowed in str(info.value)

    def test_size_default_becomes_width_and_height(self, tmp_path):
        path = one_model(tmp_path / "models.yaml", "m", extra="    defaults: {size: 512x768, steps: 12}\n")
        spec = parse_models_file(path)["m"]
        assert spec.defaults == {"width": 512, "height": 768, "steps": 12}

    def test_model_defaults_override_family_defaults(self, tmp_path):
        folder = fake_pipeline(tmp_path / "sdxl", "StableDiffusionXLPipeline")
        reg = registry_for(tmp_path, folder, "    defaults: {steps: 12}\n")
        assert reg.defaults("m", reg.files("m").family) == {"steps": 12, "guidance": 6.0, "width": 1024, "height": 1024}

    @pytest.mark.parametrize(("defaults", "field"), [
        ("{steps: 0}", "steps"),
        ("{size: 500x512}", "width"),
        ("{size: big}", "size"),
    ])
    def test_bad_default_is_refused(self, tmp_path, defaults, field):
        path = one_model(tmp_path / "models.yaml", "m", extra=f"    defaults: {defaults}\n")
        with pytest.raises(RegistryError) as info:
            parse_models_file(path)
        assert f"bad default {field}:" in str(info.value)

    @pytest.mark.parametrize("key", ["sampler", "seed", "seeds", "count"])
    def test_only_render_settings_can_be_defaults(self, tmp_path, key):
        path = one_model(tmp_path / "models.yaml", "m", extra=f"    defaults: {{{key}: 1}}\n")
        with pytest.raises(RegistryError, match=f"'{key}' cannot be a default"):
            parse_models_file(path)

    def test_roles_default_to_none(self, tmp_path):
        assert parse_models_file(one_model(tmp_path / "models.yaml", "m"))["m"].roles == ()

    def test_description_and_example_prompt_are_read(self, tmp_path):
        path = one_model(tmp_path / "models.yaml", "m", extra="    description: a fox model\n    example: a fox, snow\n")
        model = parse_models_file(path)["m"]
        assert (model.description, model.example) == ("a fox model", "a fox, snow")

    def test_quoted_allow_pickle_is_refused_not_read_as_true(self, tmp_path):
        path = one_model(tmp_path / "models.yaml", "m", extra='    allow_pickle: "false"\n')
        with pytest.raises(RegistryError, match="allow_pickle must be true or false"):
            parse_models_file(path)

    def test_empty_models_section_is_fine(self, tmp_path):
        assert parse_models_file(write_models(tmp_path / "models.yaml", "models:\n")) == {}

    def test_missing_relative_folder_is_not_taken_for_a_hub_id(self, tmp_path):
        path = one_model(tmp_path / "models.yaml", "m", source="./sd15")
        registry = load_registry(path)
        assert "does not exist" in registry.files("m").problem


class TestFamilyDetection:
    @pytest.mark.parametrize(("class_name", "family"), [
        ("StableDiffusionPipeline", "sd"),
        ("StableDiffusionXLPipeline", "sdxl"),
        ("StableDiffusion3Pipeline", "sd3"),
        ("FluxPipeline", "flux"),
    ])
    def test_family_comes_from_model_index(self, tmp_path, class_name, family):
        folder = fake_pipeline(tmp_path / "model", class_name)
        files = registry_for(tmp_path, folder).files("m")
        assert files.available
        assert (files.family, files.pipeline_class) == (family, class_name)
        assert files.folder == folder

    def test_folder_name_is_ignored(self, tmp_path):
        folder = fake_pipeline(tmp_path / "sdxl-looking-name", "StableDiffusion3Pipeline")
        files = registry_for(tmp_path, folder).files("m")
        assert files.family == "sd3"

    def test_unsupported_pipeline_is_a_problem(self, tmp_path):
        folder = fake_pipeline(tmp_path / "model", "KandinskyV22Pipeline")
        files = registry_for(tmp_path, folder).files("m")
        assert not files.available
        assert files.pipeline_class == "KandinskyV22Pipeline"
        assert "not supported" in files.problem
        assert "FluxPipeline" in files.problem

    def test_folder_without_model_index_is_a_problem(self, tmp_path):
        folder = tmp_path / "model"
        (folder / "unet").mkdir(parents=True)
        files = registry_for(tmp_path, folder).files("m")
        assert not files.available
        assert "model_index.json" in files.problem

    def test_invalid_model_index_is_a_problem(self, tmp_path):
        folder = tmp_path / "model"
        folder.mkdir()
        (folder / "model_index.json").write_text("{not json")
        files = registry_for(tmp_path, folder).files("m")
        assert not files.available
        assert "not a valid diffusers model index" in files.problem

    def test_missing_folder_does_not_exist(self, tmp_path):
        files = registry_for(tmp_path, tmp_path / "nowhere").files("m")
        assert not files.available
        assert files.folder is None
        assert "does not exist" in files.problem


class TestPickle:
    @pytest.fixture
    def pickled(self, tmp_path):
        folder = fake_pipeline(tmp_path / "model", "StableDiffusionPipeline")
        (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04")
        (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"{}")
        return folder

    def test_pickle_only_component_is_refused(self, tmp_path, pickled):
        files = registry_for(tmp_path, pickled).files("m")
        assert not files.available
        assert files.family == "sd"
        assert "unet" in files.problem
        assert "pickle" in files.problem
        assert "allow_pickle" in files.problem

    def test_allow_pickle_accepts_it(self, tmp_path, pickled):
        reg = registry_for(tmp_path, pickled, "    allow_pickle: true\n")
        assert reg.get("m").allow_pickle
        assert reg.files("m").available

    def test_component_with_safetensors_beside_bin_is_fine(self, tmp_path, pickled):
        (pickled / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"{}")
        assert registry_for(tmp_path, pickled).files("m").available

    @pytest.mark.parametrize("name", ["v1-5-pruned.ckpt", "model.pt"])
    def test_pickle_checkpoint_file_is_refused(self, tmp_path, name):
        checkpoint = tmp_path / name
        checkpoint.write_bytes(b"\x80\x04")
        files = registry_for(tmp_path, checkpoint).files("m")
        assert not files.available
        assert name in files.problem
        assert "pickle" in files.problem
        assert "allow_pickle" in files.problem

    def test_single_file_safetensors_is_refused(self, tmp_path):
        checkpoint = tmp_path / "model.safetensors"
        checkpoint.write_bytes(b"{}")
        files = registry_for(tmp_path, checkpoint).files("m")
        assert not files.available
        assert "model_index.json" in files.problem


class TestHubCache:
    SHA = "0123456789abcdef0123456789abcdef01234567"

    def cache(self, tmp_path, repo_id: str, class_name: str) -> Path:
        repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(self.SHA + "\n")
        return fake_pipeline(repo / "snapshots" / self.SHA, class_name)

    def test_cached_hub_model_is_found(self, tmp_path):
        snapshot = self.cache(tmp_path, "black-forest-labs/FLUX.1-schnell", "FluxPipeline")
        reg = registry_for(tmp_path, "black-forest-labs/FLUX.1-schnell")
        assert reg.get("m").source == "black-forest-labs/FLUX.1-schnell"
        files = reg.files("m")
        assert files.available
        assert files.folder == snapshot
        assert files.family == "flux"

    def test_revision_by_commit(self, tmp_path):
        snapshot = self.cache(tmp_path, "org/name", "StableDiffusionXLPipeline")
        reg = registry_for(tmp_path, "org/name", f"    revision: '{self.SHA}'\n")
        assert reg.files("m").folder == snapshot

    def test_uncached_hub_model_is_unavailable_without_problem(self, tmp_path):
        self.cache(tmp_path, "org/other", "StableDiffusionPipeline")
        files = registry_for(tmp_path, "org/name").files("m")
        assert not files.available
        assert files.folder is None
        assert files.problem is None
        assert files.family is None


class TestRelativeSources:
    def test_relative_source_is_relative_to_the_models_file(self, tmp_path, isolated):
        conf = tmp_path / "conf"
        folder = fake_pipeline(conf / "sd15", "StableDiffusionPipeline")
        path = one_model(conf / "models.yaml", "m", "sd15")
        reg = load_registry(path)
        assert Path(reg.get("m").source) == folder
        assert reg.files("m").available
        assert not (isolated / "sd15").exists()

    def test_existing_local_path_that_looks_like_a_hub_id_is_local(self, tmp_path):
        conf = tmp_path / "conf"
        folder = fake_pipeline(conf / "weights" / "sdxl", "StableDiffusionXLPipeline")
        reg = load_registry(one_model(conf / "models.yaml", "m", "weights/sdxl"))
        assert Path(reg.get("m").source) == folder
        assert reg.files("m").family == "sdxl"


def test_get_unknown_model_lists_known_ones(tmp_path):
    path = write_models(tmp_path / "models.yaml",
                        "models:\n  sd15:\n    source: org/a\n  flux:\n    source: org/b\n")
    reg = load_registry(path)
    with pytest.raises(RegistryError) as info:
        reg.get("sdxl")
    message = str(info.value)
    assert "unknown model 'sdxl'" in message
    for name in ("demo", "sd15", "flux"):
        assert name in message
    assert str(path) in message


def test_the_shipped_example_registry_parses_with_real_entries():
    models = parse_models_file(Path(__file__).resolve().parent.parent / "models.example.yaml")
    assert {"sd-turbo", "sdxl", "sd35-medium", "sd35-large", "flux-schnell"} <= set(models)
    assert models["flux-schnell"].source == "black-forest-labs/FLUX.1-schnell"
    assert models["sd-turbo"].defaults == {"steps": 1, "guidance": 0.0, "width": 512, "height": 512}
