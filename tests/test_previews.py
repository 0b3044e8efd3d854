import io

import numpy as np
import pytest
from PIL import Image

from engines.previews import FACTORS, LATENT_RGB_FILE, encode_preview, latents_to_rgb, preview_factors
from engines.protocol import PREVIEW_MAX_BYTES


@pytest.mark.parametrize(("family", "channels"), [("sd", 4), ("sdxl", 4), ("sd3", 16), ("flux", 16)])
def test_latents_map_to_an_rgb_image(family, channels):
    latents = np.random.default_rng(0).normal(size=(channels, 16, 24)).astype(np.float32)
    rgb = latents_to_rgb(latents, FACTORS[family])
    assert rgb.shape == (16, 24, 3) and rgb.dtype == np.uint8
    assert FACTORS[family][0].shape == (channels, 3)


def test_the_linear_map_is_the_published_one():
    latents = np.zeros((4, 1, 1), np.float32)
    latents[3] = 1.0  # SD's fourth channel is mostly anti-blue
    r, g, b = latents_to_rgb(latents, FACTORS["sd"])[0, 0]
    assert b < r < 127 and b < g < 127
    assert tuple(latents_to_rgb(np.zeros((4, 2, 2), np.float32), FACTORS["sdxl"])[0, 0]) == (141, 125, 127)


def test_wrong_channel_count_is_named():
    with pytest.raises(ValueError, match="16 latent channels, got 4"):
        latents_to_rgb(np.zeros((4, 8, 8), np.float32), FACTORS["flux"])


def test_a_model_with_its_own_latents_brings_its_own_map(tmp_path):
    assert preview_factors("sd", tmp_path) is FACTORS["sd"]
    (tmp_path / LATENT_RGB_FILE).write_text('{"factors": [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], "bias": [0, 0, -1]}')
    latents = np.zeros((4, 1, 1), np.float32)
    latents[0] = 1.0
    assert tuple(latents_to_rgb(latents, preview_factors("sd", tmp_path))[0, 0]) == (255, 127, 0)


def test_previews_fit_one_protocol_message():
    noise = np.random.default_rng(1).integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    mime, data = encode_preview(noise)
    assert mime == "image/jpeg" and len(data) <= PREVIEW_MAX_BYTES
    assert max(Image.open(io.BytesIO(data)).size) <= 128
