"""Session folders: `sessions/<name>/` with the rendered PNGs under `images/`.

Each PNG carries its full job record (engines.metadata). The session's own YAML
record, journal and resume come with the sessions work (issue 3).
"""

from __future__ import annotations

import time
from pathlib import Path

DEFAULT_ROOT = Path("sessions")


def new_session_dir(root: Path = DEFAULT_ROOT) -> Path:
    """A fresh, not yet existing folder under `root`, named by the local time."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = root / stamp
    n = 2
    while folder.exists():
        folder, n = root / f"{stamp}-{n}", n + 1
    return folder


def images_dir(session: Path) -> Path:
    return session / "images"
