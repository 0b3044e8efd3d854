"""An image's identity as the record keeps it: the SHA-256 of its decoded pixels, whatever the
file's encoding. The worker writes it; replay and the tests check it. PIL only."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image


def pixel_sha256(image: Image.Image) -> str:
    """SHA-256 of the decoded pixels, with their mode and size: PNG metadata or
    compression settings do not change it; one changed pixel does."""
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def file_pixel_sha256(path: str | Path) -> str:
    with Image.open(path) as image:
        return pixel_sha256(image)
