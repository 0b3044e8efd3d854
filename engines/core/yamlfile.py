"""Reading the YAML files a person may edit (models.yaml, session.yaml, config.yaml, themes), with a
message that names the file and the line at fault, raised as the caller's own error type.

Aliases (`*name`) are refused: a few hundred bytes of nested aliases expand to gigabytes
(a "billion laughs"), and none of these files needs one."""

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


class _NoAliasLoader(yaml.SafeLoader):
    """The pure-Python safe loader (its messages name the character at fault), refusing aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"an alias (*{event.anchor}) is not accepted; "
                                              "write the value out in full", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """YAML as `yaml.safe_load` reads it, but with no aliases (yaml.YAMLError for one)."""
    return yaml.load(text, Loader=_NoAliasLoader)


def parse_yaml(text: str, path: Path, error: type[Exception]) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{path}{where}: not valid YAML ({problem})") from None
    except RecursionError:  # the loader recurses once per level of nesting
        raise error(f"{path}: not valid YAML (nested too deeply to read)") from None
