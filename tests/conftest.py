import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from daemons import serve
from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER, load_registry
from helpers import write_models

# The tests run in two processes (pytest -n 2, pyproject.toml), each starting workers that render
# with torch. One thread each: two torches of two threads on two cores made OpenMP's spin-waits
# turn a one-second render into a minute (measured here). Before any torch is imported.
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """SDXL-, SD3- and Flux-shaped tiny pipelines saved as safetensors folders, built offline."""
    import tinypipes

    root = tmp_path_factory.mktemp("tiny")
    return {family: tinypipes.save(family, root / f"tiny-{family}") for family in ("sdxl", "sd3", "flux")}


@pytest.fixture
def registry(tmp_path, tiny_models):
    """The demo, a second copy of it (another model, so another worker), and the tiny families."""
    second = tmp_path / "demo-copy"
    shutil.copytree(DEMO_FOLDER, second)
    models = {"demo2": {"source": str(second), "memory_gb": 0.1, "defaults": DEMO.defaults}}
    for family, folder in tiny_models.items():
        models[f"tiny-{family}"] = {"source": str(folder), "memory_gb": 0.1,
                                     "defaults": {"steps": 4, "width": 64, "height": 64}}
    return load_registry(write_models(tmp_path, models))


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory):
    """Weight hashes are cached under XDG_CACHE_HOME, settings read from XDG_CONFIG_HOME, the
    engine daemon's state kept under XDG_STATE_HOME: tests (and their subprocesses) use their own,
    and no render attaches to a daemon of the user's."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    os.environ.pop("DIFFDECK_SOCKET", None)
    os.environ.pop("DIFFDECK_ENGINE", None)


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path_factory, monkeypatch):
    """Each test its own XDG_STATE_HOME, so its own spend ledger (a day's budget counts what was
    spent today there): no test sees another's spend, nor touches the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(autouse=True)
def _own_runtime_dir(tmp_path_factory, monkeypatch):
    """Each test its own runtime directory, so its own daemon socket: a daemon one test leaves
    behind is never attached to by another."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("run")))


@pytest.fixture
def daemon(tmp_path):
    """A real `diffdeck serve` process, with its own socket (the runtime directory is the test's)."""
    process = serve(tmp_path)
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A real 2 MB tmpfs, mounted for the test; skipped where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                             text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("a small real disk needs `mount -t tmpfs`, which is not permitted here"
                    + (f": {mounted.stderr.strip()}" if mounted else " (not root)"))
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)
