"""The workbench's settings: `~/.config/diffdeck/config.yaml` and user themes beside it.

    theme: diffdeck-light          # a built-in, a Textual theme, or a user theme's name
    images: auto                   # auto | kitty | sixel | halfcell | off
    keys:                          # binding id -> keys (comma-separated); F1 lists the ids
      cancel_job: delete
      submit: ctrl+j,f5

User themes: `~/.config/diffdeck/themes/*.yaml`, each shaped like `themes/dark.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.registry import user_config_dir
from engines.yamlfile import parse_yaml, read_utf8
from themes import FOLDER as BUILTIN_THEMES

IMAGE_MODES = ("auto", "kitty", "sixel", "halfcell", "off")


class ConfigError(Exception):
    """A settings file that cannot be used; the message names the file and the key."""


@dataclass
class Config:
    theme: str = "diffdeck-dark"
    images: str = "auto"
    keys: dict[str, str] = field(default_factory=dict)
    theme_files: list[Path] = field(default_factory=list)  # built-in, then the user's


def load_config(folder: Path | None = None) -> Config:
    folder = folder or user_config_dir()
    path = folder / "config.yaml"
    data = read_yaml(path) if path.is_file() else {}
    unknown = sorted(set(data) - {"theme", "images", "keys"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; keys are theme, images, keys")
    config = Config(**data)
    if config.images not in IMAGE_MODES:
        raise ConfigError(f"{path}: images must be one of {', '.join(IMAGE_MODES)}, got {config.images!r}")
    if not isinstance(config.keys, dict) or not all(isinstance(v, str) for v in config.keys.values()):
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
