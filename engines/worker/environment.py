"""What this machine renders with: library versions, the CPU, CUDA, GPUs. Worker side (imports torch).

`python -m diffdeck.engines.worker.environment` prints it as JSON; `diffdeck doctor` runs that in a
subprocess so the CLI process itself never imports torch.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from diffdeck.engines import __version__

LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "pillow")
# The vector extensions BLAS and oneDNN pick their kernels by, finer than torch's own capability
# (x86 flags, Arm features); a virtual machine may pass some of the host's through and not others.
_SIMD = re.compile(r"avx|amx|fma|f16c|s?sse|asimd|sve|bf16|i8mm")


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
        "cpu": _cpu(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "driver": _nvidia_driver() if cuda else None,
        "diffdeck": {"version": __version__, "commit": _git_commit()},
    }


def _cpu() -> dict[str, Any]:
    """What decides whether float kernels on the CPU give the same bits as where an image was
    made: the processor, the instruction sets torch and its libraries dispatch to, the thread count
    (one thread's reductions and several threads' differ in the last bit) and the BLAS and oneDNN
    builds."""
    info = _cpuinfo()
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version (\S+)", config)
    onednn = re.search(r"(?:MKL-DNN|oneDNN) v(\S+)", config)
    ident = [info.get(key) for key in ("vendor_id", "cpu family", "model", "stepping")]
    return {
        "name": info.get("model name") or platform.processor() or None,
        "id": "{} family {} model {} stepping {}".format(*ident) if all(ident) else None,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "simd": " ".join(sorted(f for f in (info.get("flags") or info.get("Features") or "").split()
                                if _SIMD.match(f))) or None,
        "threads": torch.get_num_threads(),
        "blas": " ".join(m.group(1) for m in (blas, mkl) if m) or None,
        "onednn": onednn.group(1) if onednn else None,
    }


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}


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


def devices() -> list[dict[str, Any]]:
    """The GPUs this process sees, in CUDA's order (CUDA_VISIBLE_DEVICES applied): what the
    Dispatcher pins workers to where NVML cannot say."""
    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(i)
        uuid = getattr(properties, "uuid", None)
        found.append({"name": properties.name, "memory": properties.total_memory,
                      "uuid": f"GPU-{uuid}" if uuid is not None else None})
    return found


if __name__ == "__main__":
    json.dump(devices() if sys.argv[1:] == ["--devices"] else describe(), sys.stdout)
