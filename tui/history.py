"""The prompt history, kept between runs in `$XDG_STATE_HOME/diffdeck/prompts.json`: the newest
LIMIT prompts, written whole or not at all. A file that cannot be read is left as it is (and not
written over); the history then starts empty for this run. Prompts are untrusted text: the
editor shows their control characters, never sends them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffdeck.engines.core.files import write_whole

LIMIT = 200


class HistoryError(Exception):
    """The history file cannot be read or written; the message names it."""


def history_file() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "diffdeck" / "prompts.json"


def load_history(path: Path) -> list[str]:
    """The prompts, oldest first; [] when there is no file yet. Raises HistoryError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise HistoryError(f"prompt history {path} cannot be read ({e}); it is left as it is") from None
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise HistoryError(f"prompt history {path} is not a list of prompts; it is left as it is")
    return prompts[-LIMIT:]


def save_history(path: Path, prompts: list[str]) -> None:
    """Raises HistoryError when it cannot be written (what was there stays)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, json.dumps({"prompts": prompts[-LIMIT:]}, ensure_ascii=False).encode())
    except OSError as e:
        raise HistoryError(f"prompt history {path} cannot be written: {e.strerror or e}") from None
