"""How close two images must be to pass for near-identical. Apart from the measuring
(diffdeck.engines.sets.similarity, which needs PIL), so that the CLI's parser can show these
defaults without importing PIL at every start."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """How close near-identical is: the last-bit noise of other float kernels, never a visible change."""
    min_psnr_db: float = 60.0
    max_difference: int = 2
    max_phash_distance: int = 2
