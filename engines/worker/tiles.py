"""Tiled img2img for upscales past what fits in memory at once: the image is cut into tiles of
`tile` pixels that overlap by at least an eighth of a tile, each tile is rendered on its own (in a
fixed order, each with the image's seed), and the tiles are laid back with linear cross-fades across
every overlap, so no seam shows and the result is the same on every run. Worker side, numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

ALIGN = 8  # tile corners on the latent grid of every family (VAE scale factors 4, 8 and 16 divide 8)


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int

    def crop(self) -> tuple[int, int, int, int]:
        """As PIL's Image.crop takes it."""
        return self.x, self.y, self.x + self.width, self.y + self.height


def overlap(tile: int) -> int:
    return max(ALIGN, tile // 8 // ALIGN * ALIGN)


def boxes(width: int, height: int, tile: int) -> list[Box]:
    """The tiles covering a `width` x `height` image, row by row; every corner on the 8-pixel grid."""
    return [Box(x, y, w, h) for y, h in _spans(height, tile) for x, w in _spans(width, tile)]


def _spans(size: int, tile: int) -> list[tuple[int, int]]:
    """(start, length) along one side: as few tiles as keep every overlap at least `overlap(tile)`,
    spread evenly."""
    if size <= tile:
        return [(0, size)]
    count = -(-(size - overlap(tile)) // (tile - overlap(tile)))
    cells = (size - tile) // ALIGN  # on the grid: steps of at most (tile - overlap) / ALIGN cells
    return [(cells * k // (count - 1) * ALIGN, tile) for k in range(count)]


class Blender:
    """Lays rendered tiles onto the canvas: where two tiles overlap, the one fades out linearly as
    the other fades in, across the whole overlap (a weighted mean where more than two meet)."""

    def __init__(self, width: int, height: int, tile: int):
        self._columns, self._rows = _spans(width, tile), _spans(height, tile)
        self._sum = np.zeros((height, width, 3), np.float64)
        self._weight = np.zeros((height, width, 1), np.float64)

    def add(self, box: Box, image: Image.Image) -> None:
        pixels = np.asarray(image.convert("RGB"), np.float64)
        weight = (_profile(self._columns, box.x)[None, :] * _profile(self._rows, box.y)[:, None])[..., None]
        rows, cols = slice(box.y, box.y + box.height), slice(box.x, box.x + box.width)
        self._sum[rows, cols] += pixels * weight
        self._weight[rows, cols] += weight

    def image(self) -> Image.Image:
        mean = self._sum / np.maximum(self._weight, 1e-12)
        return Image.fromarray(np.clip(np.rint(mean), 0, 255).astype(np.uint8), "RGB")


def _profile(spans: list[tuple[int, int]], start: int) -> np.ndarray:
    """One tile's weights along one side: rising across its overlap with the tile before it, falling
    across its overlap with the tile after it, 1 between; never 0, so every pixel has a weight."""
    j = [s for s, _ in spans].index(start)
    length = spans[j][1]
    profile = np.ones(length)
    if j > 0:
        rise = spans[j - 1][0] + spans[j - 1][1] - start
        profile[:rise] = (np.arange(rise) + 0.5) / rise
    if j + 1 < len(spans):
        fall = start + length - spans[j + 1][0]
        profile[length - fall:] = np.minimum(profile[length - fall:], (np.arange(fall)[::-1] + 0.5) / fall)
    return profile
