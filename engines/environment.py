"""What this machine renders with: library versions, CUDA, GPUs. Worker side (imports torch).

`python -m engines.environment` prints it as JSON; `diffdeck doctor` runs that in a
subprocess so the CLI process itself never imports torch.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from typing import Any

import torch

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
    }


if __name__ == "__main__":
    json.dump(describe(), sys.stdout)
