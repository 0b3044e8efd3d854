"""Reading the YAML files a person may edit (models.yaml, session.yaml, config.yaml), with a
message that names the file and the line at fault, raised as the caller's own error type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

def read_utf8(path: Path, error: type[Exception]) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise error(f"{path} cannot be read: {e.strerror or e}") from None


def parse_yaml(text: str, path: Path, error: type[Exception]) -> Any:
    try:
        return yaml.safe_load(text)  # the pure-Python loader: its messages name the character at fault
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{path}{where}: not valid YAML ({problem})") from None
