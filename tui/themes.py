"""Colour themes from YAML files (the built-in ones in themes/, and the user's) as Textual Themes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from diffdeck.tui.config import ConfigError, read_yaml
from textual.theme import Theme

THEME_FIELDS = {f.name for f in dataclasses.fields(Theme)}
THEME_NAME = re.compile(r"[\w.-]+")  # shown in the command palette, which reads markup


def load_theme(path: Path) -> Theme:
    data = read_yaml(path)
    unknown = sorted(set(data) - THEME_FIELDS)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]!r} is not a theme field; fields are {', '.join(sorted(THEME_FIELDS))}")
    if "name" not in data or "primary" not in data:
        raise ConfigError(f"{path}: a theme needs at least a name and a primary colour")
    if not isinstance(data["name"], str) or not THEME_NAME.fullmatch(data["name"]):
        raise ConfigError(f"{path}: a theme's name is letters, digits, '-', '_' and '.', "
                          f"as in diffdeck-dark; not {data['name']!r}")
    try:
        theme = Theme(**data)
        theme.to_color_system()  # parses every colour now, not at the first redraw
    except Exception as e:  # noqa: BLE001 - Textual's colour parser raises several kinds
        raise ConfigError(f"{path}: {e}") from None
    return theme
