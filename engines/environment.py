"""What this machine renders with: library versions, CUDA, GPUs. Worker side (imports torch).

`python -m engines.environment` prints it as JSON; `diffdeck doctor` runs that in a
subprocess so the CLI process itself never imports torch.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from . import __version__

LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "pillow")


def describe() -> dict[str, Any]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "driver": _nvidia_driver() if cuda else None,
        "diffdeck": {"version": __version__, "commit": _git_commit()},
    }


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001 - nvidia-ml-py is optional
        return None


def _git_commit() -> str | None:
    """The commit of a diffdeck run from a git checkout; None when installed from a wheel."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


if __name__ == "__main__":
    json.dump(describe(), sys.stdout)
