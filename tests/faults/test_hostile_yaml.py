"""YAML alias bombs ("billion laughs") in every YAML file diffdeck reads: a few hundred bytes that
expand to gigabytes once used. Each is refused at once, with one line naming the file and line,
and nothing is written."""

import json
import time

import pytest
from diffdeck.engines.core.spec import JobSpec
from helpers import diffdeck

# nine levels of nine aliases each: 9**9 strings once expanded (gigabytes, minutes)
ANCHORS = "".join(f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9) if n else ', '.join(['lol'] * 9)}]\n"
                  for n in range(10))


def refused(result, path: str, started: float) -> str:
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert f"{path} line " in line and "an alias (*l" in line and "Traceback" not in line, line
    assert time.monotonic() - started < 30
    return line


def test_a_session_record_with_an_alias_bomb_is_refused_and_left_as_it_is(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    job = {"spec": JobSpec("a red circle", seed=1, seeds=(1,), steps=2).to_dict(), "status": "queued", "images": [],
           "worker_crashes": 0}
    record = f"format: 1\nname: s\ncreated: '2026-01-01'\nbomb:\n{ANCHORS}models: *l9\nsets: {{}}\njobs:\n" \
             f'  "job-0001": {json.dumps(job)}\n'
    (folder / "session.yaml").write_text(record)
    started = time.monotonic()
    refused(diffdeck("resume", "s", cwd=tmp_path, timeout=60), "session.yaml", started)
    assert (folder / "session.yaml").read_text() == record
    assert sorted(p.name for p in folder.iterdir()) == ["session.yaml"]


def test_a_models_file_with_an_alias_bomb_is_refused(tmp_path):
    (tmp_path / "models.yaml").write_text(
        f"bomb:\n{ANCHORS}models:\n  demo2:\n    source: somewhere\n    description: *l9\n")
    started = time.monotonic()
    refused(diffdeck("models", "--models", "models.yaml", cwd=tmp_path, timeout=60), "models.yaml", started)


@pytest.mark.parametrize("where", ["config.yaml", "themes/bomb.yaml"])
def test_settings_and_themes_with_an_alias_bomb_are_refused_before_the_workbench_opens(tmp_path, monkeypatch, where):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = tmp_path / "config" / "diffdeck" / where
    path.parent.mkdir(parents=True)
    path.write_text(f"name: bomb\nprimary: '#ff0000'\nbomb:\n{ANCHORS}dark: *l9\n" if "themes" in where
                    else f"bomb:\n{ANCHORS}keys: *l9\n")
    started = time.monotonic()
    refused(diffdeck("--engine", "local", cwd=tmp_path, timeout=60), where, started)
    assert not (tmp_path / "sessions").exists()


def test_a_theme_whose_name_is_markup_is_refused(tmp_path, monkeypatch):
    """A theme's name is shown in the command palette, which reads markup: "[/]" would end the app."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = tmp_path / "config" / "diffdeck" / "themes" / "odd.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("name: '[/] odd'\nprimary: '#ff0000'\n")
    result = diffdeck("--engine", "local", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"diffdeck: error: {path}: a theme's name is letters, digits, '-', '_' and '.', " \
                            "as in diffdeck-dark; not '[/] odd'\n"
