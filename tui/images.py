"""Inline images: which textual-image widget draws them, and thumbnails made off the event loop.

textual-image asks the terminal what it supports when it is imported, so `image_widget()` is
called once before the app starts. Kitty graphics send the whole PNG at every redraw: the
gallery shows thumbnails, never the full files. PIL loads with the first image, not before the
workbench's first frame.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

THUMB_PX = 128
GRAPHICS_MODES = ("auto", "kitty", "sixel")  # the modes that send the terminal graphics


def tmux_blocks_graphics(mode: str) -> bool:
    """Whether `mode` sends graphics into a tmux that does not pass them through (asked once, at
    start-up, and only for such a mode: asking runs tmux, before the first frame)."""
    return mode in GRAPHICS_MODES and bool(os.environ.get("TMUX")) and not _tmux_passthrough()


def effective_mode(mode: str, tmux_blocks: bool) -> str:
    """`auto` inside a tmux that does not pass graphics through draws half-blocks."""
    return "halfcell" if mode == "auto" and tmux_blocks else mode


def image_widget(mode: str):
    """The widget class for `--images MODE`; None for `off` (the gallery shows text instead)."""
    if mode == "off":
        return None
    import textual_image.widget as widgets  # queries the terminal: before App.run()

    return {"auto": widgets.Image, "kitty": widgets.TGPImage, "sixel": widgets.SixelImage,
            "halfcell": widgets.HalfcellImage}[mode]


def thumbnail(path: Path | str, size: int = THUMB_PX) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(path) as image:
        image.thumbnail((size, size))
        return image.convert("RGB")


def decode_preview(data: bytes) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def terminal_hint(mode: str, tmux_blocks: bool) -> str | None:
    """One line on what the terminal lacks, or None when nothing is missing."""
    hints = []
    if os.environ.get("COLORTERM", "").lower() not in ("truecolor", "24bit"):
        hints.append("no truecolour (COLORTERM unset; over SSH forward it, e.g. SendEnv COLORTERM)")
    if mode in GRAPHICS_MODES and tmux_blocks:
        drawn = "images as half-blocks" if mode == "auto" else f"{mode} images may not show"
        hints.append(f"tmux without passthrough: {drawn} (set -g allow-passthrough on)")
    return "; ".join(hints) or None


def _tmux_passthrough() -> bool:
    if shutil.which("tmux") is None:
        return False
    try:
        result = subprocess.run(["tmux", "show", "-gv", "allow-passthrough"], capture_output=True, text=True,
                                timeout=2, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.stdout.strip() in ("on", "all")
