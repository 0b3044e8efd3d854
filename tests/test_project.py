"""The project as a user installs it: the README's commands, and the wheel pip builds."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    command = readme[readme.index("# 2. install, and run the tests (CPU only, no network)") + 1]
    assert command.endswith("python -m pytest")
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_wheel_installs_one_top_level_package_whose_command_runs(tmp_path):
    """pip users get `diffdeck` alone in site-packages (engines, tui and themes inside it), and
    the `diffdeck` command of a fresh environment runs from it."""
    dist, venv, source = tmp_path / "dist", tmp_path / "venv", tmp_path / "source"
    for name in ("engines", "tui", "themes"):  # a copy: building writes build/ and egg-info beside the source
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(dist), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("diffdeck-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {"diffdeck", wheel.name.split("-py")[0] + ".dist-info"}
    assert "diffdeck/engines/demo_model/unet/config.json" in names and "diffdeck/themes/workbench.tcss" in names
    assert "diffdeck/engines/demo/loras/striped.safetensors" in names  # the demo LoRA the README names

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    before = set(os.listdir(site))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    added = set(os.listdir(site)) - before
    assert {name for name in added if not name.endswith(".dist-info")} == {"diffdeck"}, added

    # its dependencies from this environment (a path entry runs no .pth, so this checkout's
    # editable diffdeck stays out), the package itself from the fresh one
    deps = {"PYTHONPATH": sysconfig.get_path("purelib"), "PATH": os.environ["PATH"]}
    helped = subprocess.run([venv / "bin" / "diffdeck", "--help"], capture_output=True, text=True, env=deps,
                            timeout=120, cwd=tmp_path)
    assert helped.returncode == 0 and "render" in helped.stdout, helped.stderr
    where = subprocess.run([python, "-c", "import diffdeck.engines as e, importlib.util as u; print(e.__file__);"
                            "print(u.find_spec('engines'), u.find_spec('tui'))"], capture_output=True, text=True,
                           env=deps, cwd=tmp_path, check=True).stdout.split("\n")
    assert where[0].startswith(str(site)) and where[1] == "None None"


def test_every_package_folder_is_in_the_installed_package_list():
    """pyproject.toml lists the packages by hand (a package-dir mapping): a new room must be in it,
    or the wheel would leave it out while an editable install still finds it."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads TOML")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(("diffdeck", *init.parent.relative_to(ROOT).parts))
               for top in ("engines", "tui", "themes") for init in (ROOT / top).rglob("__init__.py")}
    assert listed == folders
