"""The workbench's settings: `~/.config/diffdeck/config.yaml` and user themes beside it.

    theme: diffdeck-light          # a built-in, a Textual theme, or a user theme's name
                                   # (the command palette's choice is saved here)
    images: auto                   # auto | kitty | sixel | halfcell | off
    notify: off                    # off | bell | osc9: say so when the queue empties
    keys:                          # binding id -> keys (comma-separated); F1 lists the ids
      cancel_job: delete
      submit: ctrl+j,f5

User themes: `~/.config/diffdeck/themes/*.yaml`, each shaped like `themes/dark.yaml`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffdeck.engines.core.files import write_whole
from diffdeck.engines.core.registry import user_config_dir
from diffdeck.engines.core.yamlfile import parse_yaml, read_utf8
from diffdeck.themes import FOLDER as BUILTIN_THEMES

IMAGE_MODES = ("auto", "kitty", "sixel", "halfcell", "off")
NOTIFY_MODES = ("off", "bell", "osc9")
KEYS = ("theme", "images", "notify", "keys")


class ConfigError(Exception):
    """A settings file that cannot be used; the message names the file and the key."""


@dataclass
class Config:
    theme: str = "diffdeck-dark"
    images: str = "auto"
    notify: str = "off"
    keys: dict[str, str] = field(default_factory=dict)
    theme_files: list[Path] = field(default_factory=list)  # built-in, then the user's
    file: Path | None = None  # where a setting chosen in the workbench is saved


def load_config(folder: Path | None = None) -> Config:
    folder = folder or user_config_dir()
    path = folder / "config.yaml"
    data = read_yaml(path) if path.is_file() else {}
    unknown = sorted(map(str, set(data) - set(KEYS)))  # YAML keys may be numbers too
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; keys are {', '.join(KEYS)}")
    config = Config(**data, file=path)
    if not isinstance(config.theme, str):
        raise ConfigError(f"{path}: theme must be one theme's name, for example diffdeck-light")
    if config.images not in IMAGE_MODES:
        raise ConfigError(f"{path}: images must be one of {', '.join(IMAGE_MODES)}, got {config.images!r}")
    if config.notify not in NOTIFY_MODES:
        raise ConfigError(f"{path}: notify must be one of {', '.join(NOTIFY_MODES)}, got {config.notify!r}")
    if not isinstance(config.keys, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in config.keys.items()):
        raise ConfigError(f"{path}: keys must map binding ids to keys, for example cancel_job: delete")
    config.theme_files = sorted(BUILTIN_THEMES.glob("*.yaml")) + sorted((folder / "themes").glob("*.yaml"))
    return config


def read_yaml(path: Path) -> dict[str, Any]:
    data = parse_yaml(read_utf8(path, ConfigError), path, ConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of settings")
    return data


def save_setting(path: Path, key: str, value: str) -> None:
    """Set one top-level key of the settings file, keeping every other line as it was (comments
    too, and one after the value); the file is written whole or not at all. Raises ConfigError
    when the file cannot be read or would not read back, OSError when it cannot be written."""
    text = read_utf8(path, ConfigError) if path.is_file() else ""
    shown = value if re.fullmatch(r"[\w.-]+", value) else json.dumps(value)  # a JSON string is YAML too
    line = re.compile(rf"^{re.escape(key)}:[^#\n]*?(\s+#[^\n]*)?$", re.MULTILINE)
    if line.search(text):
        text = line.sub(lambda m: f"{key}: {shown}{m.group(1) or ''}", text, count=1)
    else:
        text += ("" if text.endswith("\n") or not text else "\n") + f"{key}: {shown}\n"
    read_back = parse_yaml(text, path, ConfigError)
    if not isinstance(read_back, dict) or read_back.get(key) != value:
        raise ConfigError(f"{path}: {key} could not be set without rewriting the file; set {key}: {value} there")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, text.encode())
