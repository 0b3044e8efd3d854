"""Text from outside the workbench (a prompt, a model's name or description, a path, an error) as
its widgets show it: a Rich Text, which no widget parses as markup, with every control character
made visible (diffdeck.engines.core.text), so that none reaches the terminal."""

from __future__ import annotations

from diffdeck.engines.core.text import visible
from rich.text import Text


def plain(text: object, style: str = "") -> Text:
    return Text(visible(str(text)), style=style, end="")
