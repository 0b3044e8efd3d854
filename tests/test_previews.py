import io

import numpy as np
import pytest
from PIL import Image

from engines.previews import FACTORS, encode_preview, latents_to_rgb
from engines.protocol import PREVIEW_MAX_BYTES


@pytest.mark.parametrize(("family", "channels"), [("sd", 4), ("sdxl", 4), ("sd3", 16), ("flux", 16)])
def test_latents_map_to_an_rgb_image(family, channels):
    latents = np.random.default_rng(0).normal(size=(channels, 16, 24)).astype(np.float32)
    rgb = latents_to_rgb(latents, family)
    assert rgb.shape == (16, 24, 3) and rgb.dtype == np.uint8
    assert FACTORS[family][0].shape == (channels, 3)


def test_the_linear_map_is_the_published_one():
    latents = np.zeros((4, 1, 1), np.float32)
    latents[3] = 1.0  # SD's fourth channel is mostly anti-blue
    r, g, b = latents_to_rgb(latents, "sd")[0, 0]
    assert b < r < 127 and b < g < 127
    assert tuple(latents_to_rgb(np.zeros((4, 2, 2), np.float32), "sdxl")[0, 0]) == (141, 125, 127)


def test_wrong_channel_count_is_named():
    with pytest.raises(ValueError, match="16 latent channels, got 4"):
        latents_to_rgb(np.zeros((4, 8, 8), np.float32), "flux")


def test_previews_fit_one_protocol_message():
    noise = np.random.default_rng(1).integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    mime, data = encode_preview(noise)
    assert mime == "image/jpeg" and len(data) <= PREVIEW_MAX_BYTES
    assert max(Image.open(io.BytesIO(data)).size) <= 128
