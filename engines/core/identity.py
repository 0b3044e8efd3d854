"""What a model is, by content: the hub snapshot commit, the SHA-256 of every weight file,
the pipeline class and the scheduler's config as shipped. UI side: reads files only.

Hashing gigabytes takes seconds, so a file's hash is cached by path, size and mtime; a file in
the hub cache is named by its SHA-256 already (its blob), which costs nothing to read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from diffdeck.engines.core.registry import snapshot_commit

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_BLOB = re.compile(r"^[0-9a-f]{64}$")


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffdeck" / "sha256.json"


def model_identity(folder: Path) -> dict[str, Any]:
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text(encoding="utf-8")) if scheduler_file.is_file() else None
    weights = sorted(p for p in folder.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES) and p.is_file())
    return {
        "revision": snapshot_commit(folder),
        "pipeline_class": index.get("_class_name"),
        "scheduler": scheduler,
        "weights": _hashes(folder, weights),
    }


def _hashes(folder: Path, files: list[Path]) -> dict[str, str]:
    cache_path = cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    hashes, changed = {}, False
    for path in files:
        resolved = path.resolve()
        if _BLOB.match(resolved.name) and resolved.parent.name == "blobs":
            digest = resolved.name
        else:
            stat = resolved.stat()
            key, stamp = str(resolved), [stat.st_size, stat.st_mtime_ns]
            if cache.get(key, {}).get("stamp") != stamp:
                cache[key], changed = {"stamp": stamp, "sha256": _sha256(resolved)}, True
            digest = cache[key]["sha256"]
        hashes[path.relative_to(folder).as_posix()] = digest
    if changed:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_path.with_name(cache_path.name + f".{os.getpid()}")
        partial.write_text(json.dumps(cache))
        os.replace(partial, cache_path)
    return hashes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
