"""What this machine renders with, asked of a fresh Python process (engines.environment),
so that the asking process never imports torch. UI side."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def probe_environment(timeout_s: float = 120) -> dict[str, Any] | None:
    """The environment a worker would report, or None when torch cannot be started."""
    try:
        result = subprocess.run([sys.executable, "-m", "engines.environment"], capture_output=True, text=True,
                                timeout=timeout_s, stdin=subprocess.DEVNULL)
        return json.loads(result.stdout) if result.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None


def environment_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'what: recorded -> now' for every leaf that differs, in a stable order."""
    flat_then, flat_now = _flatten(recorded), _flatten(current)
    return [f"{key}: {flat_then.get(key)!r} -> {flat_now.get(key)!r}"
            for key in sorted(set(flat_then) | set(flat_now)) if flat_then.get(key) != flat_now.get(key)]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
