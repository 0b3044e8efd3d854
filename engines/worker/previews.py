"""Cheap step previews: a linear map from latent channels to RGB, as ComfyUI does.

Worker side, numpy only: the worker hands over the denoised estimate as an array.
Factors as ComfyUI's latent previewers use them (its latent_formats); rows are latent channels,
columns R, G, B. A model whose latents are its own (the demo model has its own autoencoder) ships
its map in `latent_rgb.json`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from diffdeck.engines.core.worker_protocol import PREVIEW_MAX_BYTES
from PIL import Image

_SD = [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
       [-0.2120, -0.2616, -0.7177]]
_SDXL = [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
         [-0.3165, -0.2492, -0.2188]]
_SD3 = [[-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
        [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
        [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
        [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
        [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
        [-0.1448, -0.1463, -0.1189]]
_FLUX = [[-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
         [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
         [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
         [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
         [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
         [-0.1262, -0.0982, -0.0778]]

FACTORS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "sd": (np.array(_SD, np.float32), np.zeros(3, np.float32)),
    "sdxl": (np.array(_SDXL, np.float32), np.array([0.1084, -0.0175, -0.0011], np.float32)),
    "sd3": (np.array(_SD3, np.float32), np.array([0.2394, 0.2135, 0.1925], np.float32)),
    "flux": (np.array(_FLUX, np.float32), np.array([-0.0329, -0.0718, -0.0851], np.float32)),
}
LATENT_RGB_FILE = "latent_rgb.json"  # {"factors": [[r, g, b] per latent channel], "bias": [r, g, b]}
PREVIEW_SIDE = 128  # longest side of a preview; a 1024x1024 SDXL latent is 128x128 anyway


def preview_factors(family: str, folder: Path | None = None,
                    channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The model's own map from its folder's `latent_rgb.json` if it has one, else its family's;
    a generic one when that map is not for `channels` latent channels (a fine-tune or a small
    model whose VAE is not its family's usual)."""
    path = folder / LATENT_RGB_FILE if folder else None
    if path is None or not path.is_file():
        factors = FACTORS[family]
    else:
        data = json.loads(path.read_text(encoding="utf-8"))
        factors = np.array(data["factors"], np.float32), np.array(data["bias"], np.float32)
    if channels is not None and factors[0].shape[0] != channels:
        return generic_factors(channels)
    return factors


def generic_factors(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """A map for latents no published one fits: channel i drives colour i % 3 (averaged over the
    channels that share a colour); fewer than three channels make a grey image."""
    matrix = np.zeros((channels, 3), np.float32)
    if channels < 3:
        matrix[:] = 1.0 / channels
    else:
        for i in range(channels):
            matrix[i, i % 3] = 1.0
        matrix /= matrix.sum(axis=0)
    return matrix, np.zeros(3, np.float32)


def latents_to_rgb(latents: np.ndarray, factors: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(C, H, W) latents of one image -> (H, W, 3) uint8, by `factors` (matrix, bias)."""
    matrix, bias = factors
    if latents.shape[0] != matrix.shape[0]:
        raise ValueError(f"previews need {matrix.shape[0]} latent channels, got {latents.shape[0]}")
    rgb = np.moveaxis(latents.astype(np.float32), 0, -1) @ matrix + bias
    return ((np.clip(rgb, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def encode_preview(rgb: np.ndarray) -> tuple[str, bytes]:
    """A small JPEG of an RGB preview, guaranteed to fit one protocol message."""
    image = Image.fromarray(rgb, "RGB")
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    while True:
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=80)
        if buf.tell() <= PREVIEW_MAX_BYTES or image.width <= 16:
            return "image/jpeg", buf.getvalue()
        image = image.resize((image.width // 2, max(1, image.height // 2)))
