"""Model inputs made from a seed."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def uniform_image(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """float32 uniform noise in [0, 1) of `shape` (NCHW), the same values for the same seed.
    (edgesr.probe_inputs.random_image makes natural-looking ones.)"""
    return np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)
