"""Comparing images: PSNR, the largest pixel difference and a perceptual hash, for replay
checks and A/B pairs (their pixel identity is diffdeck.engines.core.pixels).

UI side: PIL only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from diffdeck.engines.core.pixels import pixel_sha256
from diffdeck.engines.sets.tolerance import Tolerance
from PIL import Image, ImageChops, ImageStat


@dataclass(frozen=True)
class Verdict:
    # identical | near-identical | different | missing (no recorded image) | altered (the recorded
    # image's pixels no longer match the SHA-256 in its record)
    kind: str
    psnr_db: float | None = None  # None: identical pixels, or not compared
    phash_distance: int | None = 0  # None: not compared
    max_difference: int | None = None  # the largest difference of one channel of one pixel, 0..255; None: not measured
    note: str | None = None  # why, where the kind alone does not say


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB of two same-sized RGB images (inf when identical)."""
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    mse = sum(ImageStat.Stat(diff).sum2) / (3 * a.width * a.height)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def dhash(image: Image.Image, side: int = 8) -> int:
    """A difference hash: one bit per neighbouring pair of a side x side grey thumbnail."""
    grey = image.convert("L").resize((side + 1, side), Image.Resampling.LANCZOS)
    pixels = grey.tobytes()
    bits = 0
    for row in range(side):
        for col in range(side):
            left, right = pixels[row * (side + 1) + col], pixels[row * (side + 1) + col + 1]
            bits = bits << 1 | (left > right)
    return bits


def not_comparable(a: Image.Image, b: Image.Image) -> str | None:
    """Why two images cannot be measured pixel for pixel (their sizes differ); None when they can."""
    if a.size == b.size:
        return None
    return f"sizes differ ({a.width}x{a.height} vs {b.width}x{b.height}): not compared"


def measure(a: Image.Image, b: Image.Image) -> tuple[float, int]:
    """PSNR in dB (inf: identical) and perceptual-hash distance in bits of two images of one size
    (ValueError otherwise: see `not_comparable`)."""
    if why := not_comparable(a, b):
        raise ValueError(why)
    return psnr(a, b), bin(dhash(a) ^ dhash(b)).count("1")


def max_difference(a: Image.Image, b: Image.Image) -> int:
    """The largest difference of one channel of one pixel of two images of one size."""
    return max(high for _, high in ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getextrema())


def compare(recorded: str | Path, new: str | Path, tolerance: Tolerance) -> Verdict:
    """Identical pixels, or near-identical within every bound of the tolerance, or different
    (without figures where the sizes differ)."""
    with Image.open(recorded) as a, Image.open(new) as b:
        if pixel_sha256(a) == pixel_sha256(b):
            return Verdict("identical")
        if why := not_comparable(a, b):
            return Verdict("different", note=why)
        (db, distance), largest = measure(a, b), max_difference(a, b)
    near = (db >= tolerance.min_psnr_db and largest <= tolerance.max_difference
            and distance <= tolerance.max_phash_distance)
    return Verdict("near-identical" if near else "different", round(db, 2), distance, largest)
