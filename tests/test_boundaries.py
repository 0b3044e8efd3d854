"""The process boundaries the design depends on (ARCHITECTURE.md)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers")
# The worker side: the modules only `python -m engines.worker` (and offline builders) import.
WORKER_SIDE = {"worker", "pipelines", "environment", "tinypipes", "previews", "bench_bare", "train"}
UI_SIDE = sorted(p.stem for p in (ROOT / "engines").glob("*.py")
                 if p.stem not in WORKER_SIDE and p.stem != "__init__")


def imported_in_fresh_python(modules):
    code = (f"import importlib, sys, json\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            names |= {f".{node.module or a.name}".split(".")[1] for a in node.names}
    return names


TUI = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "tui").rglob("*.py")
             if p.stem != "__main__")


def test_the_commands_leave_torch_diffusers_transformers_and_numpy_unloaded():
    loaded = imported_in_fresh_python(["tui", "tui.cli", "engines.demo_train.examples"] + [f"engines.{m}" for m in UI_SIDE])
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert "numpy" not in loaded, "numpy is for the worker; the commands stay light"


def test_the_workbench_leaves_torch_diffusers_transformers_unloaded():
    loaded = imported_in_fresh_python([*TUI, "textual_image.widget"])
    assert "tui.widgets.gallery" in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)


def test_engines_never_import_the_ui():
    for path in (ROOT / "engines").rglob("*.py"):
        assert not imports_of(path) & {"tui", "textual", "textual_image"}, path.name


def test_only_worker_side_modules_touch_torch():
    for path in (ROOT / "engines").rglob("*.py"):
        names = imports_of(path)
        if names & set(HEAVY):
            assert path.stem in WORKER_SIDE, f"{path.name} imports {names & set(HEAVY)}"
        if path.stem in UI_SIDE:
            assert not names & WORKER_SIDE, f"UI-side {path.name} imports worker-side {names & WORKER_SIDE}"

