"""The boundaries the house depends on: its rooms' import contracts (pyproject.toml, checked by
import-linter), its lint rules (ruff), and at run time that the UI side never loads torch."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers")
BIN = Path(sys.executable).parent


def modules_under(folder: str, skip: tuple[str, ...] = ()) -> list[str]:
    """The importable modules of a room, as diffdeck.* names."""
    names = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__" or any(part in skip for part in parts):
            continue
        names.append(".".join(("diffdeck", *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return names


def imported_in_fresh_python(modules):
    code = (f"import importlib, sys, json\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_the_rooms_keep_their_import_contracts(tmp_path):
    """import-linter reads the package from a folder of its own: `diffdeck/` with the repository's
    three folders linked in, as the wheel lays them out."""
    (tmp_path / "diffdeck").mkdir()
    for folder in ("engines", "tui", "themes"):
        (tmp_path / "diffdeck" / folder).symlink_to(ROOT / folder)
    result = subprocess.run([BIN / "lint-imports", "--no-cache", ROOT / "pyproject.toml"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_code_passes_ruff():
    result = subprocess.run([BIN / "ruff", "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_the_commands_leave_torch_diffusers_transformers_and_numpy_unloaded():
    ui_side = modules_under("engines", skip=("worker", "demo", "bare_loop", "quality", "gpu_build", "gpu_side")) + [
        "diffdeck.tui.cli.main", "diffdeck.engines.demo.examples"]
    loaded = imported_in_fresh_python(ui_side)
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    # numpy is for the worker, and for the quality measures (engines/sets/quality.py), loaded with the
    # first image measured: the commands stay light
    assert "numpy" not in loaded, "numpy is for the worker and the quality measures; the commands stay light"


def test_the_workbench_leaves_torch_diffusers_transformers_unloaded():
    loaded = imported_in_fresh_python([*modules_under("tui"), "textual_image.widget"])
    assert "diffdeck.tui.widgets.gallery" in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)
