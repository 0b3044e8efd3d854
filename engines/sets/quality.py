"""Quality measures of an image that need no learned weights, for telemetry: what a render looks
like in numbers, never a judgement of beauty or of how well it follows its prompt.

No reference: sharpness (variance of the Laplacian), blur (Crete-Roffet's blur effect, 0 sharp to
1 blurred, as scikit-image computes it), noise (Immerkaer's fast estimate of the standard deviation
of Gaussian noise), colourfulness (Hasler and Suesstrunk's M) and entropy (Shannon, in bits, of the
grey-level histogram). Full reference: SSIM (Wang et al. 2004: an 11x11 Gaussian window of sigma
1.5, K1 0.01, K2 0.03) and MS-SSIM (Wang, Simoncelli and Bovik 2003: five scales with their
weights; fewer, their weights scaled to sum 1, where an image is too small for five).

Everything is measured on luma (ITU-R BT.601, 0 to 255, float32: `luma`, computed once an image)
but colourfulness, on RGB. An image larger than MAX_SIDE on a side is measured on a copy scaled
down to it (`scaled`). Each measure is a plain float rounded to DIGITS decimals. numpy and PIL only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

DIGITS = 4
MAX_SIDE = 2048  # larger images are measured on a copy this size on its longer side: seconds, not tens
WINDOW, SIGMA, K1, K2, PEAK = 11, 1.5, 0.01, 0.03, 255.0
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
BLUR_WINDOW = 11  # the re-blurring filter's length in Crete-Roffet's blur effect, scikit-image's default
_EPSILON = 1e-10  # as scikit-image keeps gradients from 0
_BT601 = (np.float32(0.299), np.float32(0.587), np.float32(0.114))


def scaled(image: Image.Image) -> Image.Image:
    """The image as it is measured: itself, or where a side is over MAX_SIDE, a copy scaled down
    (Lanczos) to MAX_SIDE on its longer side."""
    factor = MAX_SIDE / max(image.size)
    if factor >= 1:
        return image
    return image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                        Image.Resampling.LANCZOS)


def luma(image: Image.Image) -> np.ndarray:
    """ITU-R BT.601 luma, 0 to 255, float32: what every measure but colourfulness reads."""
    rgb = np.asarray(image.convert("RGB"))
    y = _BT601[0] * rgb[..., 0]
    y += _BT601[1] * rgb[..., 1]
    y += _BT601[2] * rgb[..., 2]
    return y


def no_reference(image: Image.Image, y: np.ndarray) -> dict[str, float]:
    """The measures of one image alone: sharpness, blur, noise, colourfulness, entropy; `y` its luma."""
    return {"sharpness": sharpness(y), "blur": blur_effect(y), "noise": noise_sigma(y),
            "colourfulness": colourfulness(image), "entropy": entropy(y)}


def full_reference(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """SSIM and MS-SSIM of an image's luma against a reference's of its size, and how many scales
    MS-SSIM had: five, or as many as keep the smaller side at 11 pixels or more (their weights
    scaled to sum 1); both None (0 scales) for images under 11 pixels a side, too small for the window."""
    if x.shape != y.shape:
        raise ValueError(f"SSIM compares images of one size, not {x.shape[1]}x{x.shape[0]} "
                         f"and {y.shape[1]}x{y.shape[0]}")
    if min(x.shape) < WINDOW:
        return {"ssim": None, "ms_ssim": None, "ms_ssim_scales": 0}
    similarity, value, scales = _multiscale(x, y)
    return {"ssim": similarity, "ms_ssim": value, "ms_ssim_scales": scales}


def sharpness(y: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of luma: higher is sharper, and busier; it grows
    with detail and noise and depends on size and content."""
    _least(y, 3)
    laplacian = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4 * y[1:-1, 1:-1]
    return _rounded(laplacian.var(dtype=np.float64))


def blur_effect(y: np.ndarray) -> float:
    """Crete-Roffet's blur effect, 0 (sharp) to 1 (blurred): how little a strong re-blur lowers the
    image's gradients, the larger of the two directions (scikit-image's blur_effect; it greys a colour
    image with BT.709's weights, this reads BT.601 luma, so on colour their figures differ a little).
    A flat image is 1."""
    _least(y, 4)
    y = y / np.float32(PEAK)
    inside = (slice(2, y.shape[0] - 1), slice(2, y.shape[1] - 1))
    effects = []
    for axis in (0, 1):
        sharp = np.maximum(_EPSILON, np.abs(_sobel(y, axis)))
        reblurred = np.maximum(_EPSILON, np.abs(_sobel(_box_same(y, BLUR_WINDOW, axis), axis)))
        total = sharp[inside].sum(dtype=np.float64)
        kept = np.maximum(0, sharp - reblurred)[inside].sum(dtype=np.float64)
        effects.append(abs(total - kept) / total)
    return _rounded(max(effects))


def noise_sigma(y: np.ndarray) -> float:
    """Immerkaer's fast estimate of the standard deviation of additive Gaussian noise in luma (in
    levels of 255): the mean absolute response to a mask that cancels smooth gradients. Edges and
    fine texture read as noise too."""
    _least(y, 3)
    response = _correlate_valid(_correlate_valid(y, (1.0, -2.0, 1.0), 0), (1.0, -2.0, 1.0), 1)
    height, width = y.shape
    return _rounded(math.sqrt(math.pi / 2) * np.abs(response).sum(dtype=np.float64) / (6 * (width - 2) * (height - 2)))


def colourfulness(image: Image.Image) -> float:
    """Hasler and Suesstrunk's M: spread and mean of the opponent channels R-G and (R+G)/2-B.
    0 for any grey image; 15 is slightly colourful, 33 moderately, 45 averagely, 59 quite, 82
    highly, 109 extremely."""
    rgb = np.asarray(image.convert("RGB"))
    r, g, b = (rgb[..., channel].astype(np.float32) for channel in range(3))
    rg, yb = r - g, (r + g) / 2 - b
    spread = math.hypot(rg.std(dtype=np.float64), yb.std(dtype=np.float64))
    return _rounded(spread + 0.3 * math.hypot(rg.mean(dtype=np.float64), yb.mean(dtype=np.float64)))


def entropy(y: np.ndarray) -> float:
    """Shannon entropy of the 256-level luma histogram, in bits (0 for a flat image, at most 8)."""
    counts = np.bincount(np.clip(np.rint(y), 0, 255).astype(np.uint8).ravel(), minlength=256)
    p = counts[counts > 0] / y.size
    return _rounded(max(0.0, float(-(p * np.log2(p)).sum())))


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """The mean structural similarity of two lumas of one size: 1 for identical images."""
    _least(x, WINDOW)
    return _rounded(_ssim_parts(x, y)[0])


def _multiscale(x: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """SSIM (the first scale's), MS-SSIM and its number of scales. Each scale halves the last by
    2x2 means, as Wang's msssim.m; a negative contrast-structure term counts as 0."""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and min(_halved_shape(x.shape, scales)) >= WINDOW:
        scales += 1
    weights = np.array(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    value, first = 1.0, 0.0
    for scale, weight in enumerate(weights):
        similarity, structure = _ssim_parts(x, y)
        first = similarity if scale == 0 else first
        last = scale == scales - 1
        value *= max(0.0, similarity if last else structure) ** weight
        if not last:
            x, y = _halved(x), _halved(y)
    return _rounded(first), _rounded(value), scales


def _ssim_parts(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term over the window's valid positions."""
    window = _gaussian(WINDOW, SIGMA)

    def blur(a: np.ndarray) -> np.ndarray:
        return _correlate_valid(_correlate_valid(a, window, 0), window, 1)

    c1, c2 = (K1 * PEAK) ** 2, (K2 * PEAK) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, covariance = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    structure = (2 * covariance + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return float((luminance * structure).mean(dtype=np.float64)), float(structure.mean(dtype=np.float64))


def _least(y: np.ndarray, side: int) -> None:
    if min(y.shape) < side:
        raise ValueError(f"an image of {y.shape[1]}x{y.shape[0]} is too small to measure "
                         f"(at least {side} pixels a side)")


def _gaussian(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _correlate_valid(a: np.ndarray, kernel, axis: int) -> np.ndarray:
    """`a` correlated with a 1-D kernel along `axis` (0 or 1), where the kernel fits wholly ('valid')."""
    length = a.shape[axis] - len(kernel) + 1
    out = np.zeros((length, a.shape[1]) if axis == 0 else (a.shape[0], length), np.float32)
    for i, k in enumerate(np.asarray(kernel, np.float32)):
        if k:
            out += k * (a[i:i + length] if axis == 0 else a[:, i:i + length])
    return out


def _same(a: np.ndarray, kernel, axis: int) -> np.ndarray:
    """As `_correlate_valid`, the same size as `a`, its edges mirrored (scipy.ndimage's 'reflect')."""
    before = (len(kernel) - 1) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (before, len(kernel) - 1 - before)
    return _correlate_valid(np.pad(a, pad, mode="symmetric"), kernel, axis)


def _box_same(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    """scipy.ndimage.uniform_filter1d: the mean of `size` neighbours along `axis`."""
    return _same(a, np.full(size, 1.0 / size), axis)


def _sobel(a: np.ndarray, axis: int) -> np.ndarray:
    """scikit-image's sobel along `axis`: the difference (1, 0, -1) along it, smoothed (1, 2, 1)/4 across."""
    return _same(_same(a, (1.0, 0.0, -1.0), axis), (0.25, 0.5, 0.25), 1 - axis)


def _halved(a: np.ndarray) -> np.ndarray:
    """Means of 2x2 blocks; an odd last row or column is repeated (Matlab's 'symmetric' padding)."""
    a = np.pad(a, [(0, a.shape[0] % 2), (0, a.shape[1] % 2)], mode="edge")
    return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4


def _halved_shape(shape: tuple[int, ...], times: int) -> tuple[int, ...]:
    return tuple(-(-side // 2**times) for side in shape)


def _rounded(value: float) -> float:
    return round(float(value), DIGITS)
