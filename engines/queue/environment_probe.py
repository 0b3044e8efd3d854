"""What this machine renders with, asked of a fresh Python process (diffdeck.engines.worker.environment),
so that the asking process never imports torch. UI side."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def probe_environment(timeout_s: float = 120) -> dict[str, Any] | None:
    """The environment a worker would report, or None when torch cannot be started."""
    return _probe([], timeout_s)


def probe_devices(timeout_s: float = 120) -> list[dict[str, Any]] | None:
    """The GPUs torch sees (name, uuid, memory), or None when torch cannot be started."""
    return _probe(["--devices"], timeout_s)


def _probe(args: list[str], timeout_s: float) -> Any:
    try:
        result = subprocess.run([sys.executable, "-m", "diffdeck.engines.worker.environment", *args], capture_output=True,
                                text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        return json.loads(result.stdout) if result.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None

