"""The demo model's world: one shape of a colour, small or large, at a position, on a background
of another colour; drawn procedurally at 64x64 and described by a caption from a small grammar.

    "a small red star on a blue background, top"

The base model knows nothing of patterns; the demo LoRA (`train_lora`) teaches it one, "striped":
horizontal bands of the background colour across a large shape ("a striped red star ...").
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SIDE = 64
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLOURS = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (245, 225, 40), "green": (40, 170, 60),
    "cyan": (40, 210, 220), "blue": (40, 70, 220), "purple": (140, 50, 190), "pink": (245, 140, 190),
    "white": (245, 245, 245), "black": (20, 20, 20),
}
SIZES = {"small": 9.0, "large": 17.0}  # the shape's outer radius in pixels
POSITIONS = {"centre": (32, 32), "left": (20, 32), "right": (44, 32), "top": (32, 20), "bottom": (32, 44)}
# Shape and colour pairs never drawn in training: the evaluation asks for them.
HELD_OUT = (("star", "red"), ("circle", "green"), ("square", "purple"), ("triangle", "cyan"),
            ("ring", "orange"), ("cross", "pink"))
SUPERSAMPLE = 4
# Stripes: bands of STRIPE_PERIOD / 2 px, the shape's colour through its centre. Only large shapes
# are striped: the demo autoencoder (4x downsampling) gives back a 6 px period as a blur and a small
# shape's 8 px stripes as a few dots, while 12 px on a large shape comes back as drawn.
PATTERNS = ("striped",)
STRIPE_PERIOD = 12.0
STRIPED_LORA = Path(__file__).parent / "loras" / "striped.safetensors"  # made by `train_lora`


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str = "large"
    position: str = "centre"
    pattern: str | None = None

    def caption(self, keep: frozenset[str] = frozenset({"size", "background", "position"})) -> str:
        """The full caption, or one that leaves out what is not in `keep` (the model learns
        the short forms too: "a red circle")."""
        size = f"{self.size} " if "size" in keep else ""
        pattern = f"{self.pattern} " if self.pattern else ""
        text = f"a {size}{pattern}{self.colour} {self.shape}"
        if "background" in keep:
            text += f" on a {self.background} background"
        if "position" in keep:
            text += f", {self.position}"
        return text


def random_scene(rng: random.Random, held_out: bool = False, pattern: str | None = None) -> Scene:
    """A scene of the training world (`held_out=False`), or one of the held-out pairs; with a
    `pattern`, a large shape of that pattern (the same draws from `rng` either way)."""
    while True:
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        if ((shape, colour) in HELD_OUT) == held_out:
            break
    background = rng.choice([c for c in COLOURS if c != colour])
    size, position = rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
    return Scene(shape, colour, background, "large" if pattern else size, position, pattern)


def draw(scene: Scene, rng: random.Random | None = None) -> Image.Image:
    """The scene at 64x64, anti-aliased; `rng` jitters the position and size a little."""
    jitter = (lambda d: rng.uniform(-d, d)) if rng else (lambda d: 0.0)
    cx, cy = POSITIONS[scene.position]
    radius = SIZES[scene.size] * (1 + jitter(0.08))
    big = Image.new("RGB", (SIDE * SUPERSAMPLE,) * 2, COLOURS[scene.background])
    cx, cy = (cx + jitter(2)) * SUPERSAMPLE, (cy + jitter(2)) * SUPERSAMPLE
    d = ImageDraw.Draw(big)
    paint(d, scene.shape, cx, cy, radius * SUPERSAMPLE, COLOURS[scene.colour], COLOURS[scene.background])
    if scene.pattern == "striped":
        stripe(d, cy, COLOURS[scene.background])
    elif scene.pattern is not None:
        raise ValueError(f"unknown pattern {scene.pattern!r}")
    return big.resize((SIDE, SIDE), Image.Resampling.LANCZOS)


def stripe(d: ImageDraw.ImageDraw, cy: float, background) -> None:
    """Bands of the background colour across the whole (supersampled) image, half of every
    STRIPE_PERIOD, leaving a band of the shape's colour centred on `cy`."""
    period, side = STRIPE_PERIOD * SUPERSAMPLE, SIDE * SUPERSAMPLE
    top = cy + period / 4 - period * math.ceil((cy + period / 4) / period)
    while top < side:
        d.rectangle((0, top, side, top + period / 2 - 1), fill=background)
        top += period


def paint(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, background) -> None:
    """One shape of outer radius r centred on (cx, cy)."""
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        inner = r * 0.55
        d.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=background)
    elif shape == "square":
        h = r * 0.85
        d.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        d.polygon(_star_points(cx, cy + r * 0.2, r * 1.1, r * 1.1, 3), fill=fill)
    elif shape == "star":
        d.polygon(_star_points(cx, cy + r * 0.05, r, r * 0.45, 5), fill=fill)
    elif shape == "cross":
        arm = r * 0.33
        d.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=fill)
        d.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _star_points(cx: float, cy: float, outer: float, inner: float, points: int) -> list[tuple[float, float]]:
    """A polygon pointing up: `points` tips, with `inner`-radius notches between (for a
    triangle, inner == outer and only the tips count)."""
    if inner == outer:
        angles = [-math.pi / 2 + k * 2 * math.pi / points for k in range(points)]
        return [(cx + outer * math.cos(a), cy + outer * math.sin(a)) for a in angles]
    result = []
    for k in range(2 * points):
        a = -math.pi / 2 + k * math.pi / points
        radius = outer if k % 2 == 0 else inner
        result.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return result
