"""Inputs edgesr's own checks feed a model: synthetic natural-like images and sample-photo crops.

`random_image` is what parity, export checks and convention measurements run on when no real
image is given; `verification_inputs` is the fixed set every conversion is verified on (crops of
the bundled sample photos plus random inputs of odd sizes, fitted to the model's size rules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ParityError

if TYPE_CHECKING:
    from .spec import Spec


def random_image(shape: Sequence[int], seed: int = 0, kind: str = "smooth",
                 value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """NCHW float32 random image: ``smooth`` (natural-image-like) or ``uniform`` noise."""
    n, c, h, w = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        x = rng.random((n, c, h, w))
    elif kind == "smooth":
        from .resize import imresize

        imgs = []
        for _ in range(n):
            base = rng.random((max(2, h // 4 + 1), max(2, w // 4 + 1), c))
            img = imresize(base, output_shape=(h, w)).reshape(h, w, c)
            imgs.append(np.clip(img + rng.normal(0.0, 0.02, img.shape), 0.0, 1.0).transpose(2, 0, 1))
        x = np.stack(imgs)
    else:
        raise ParityError(f"unknown random image kind {kind!r} (smooth | uniform)")
    lo, hi = value_range
    # C-contiguous NCHW: a transposed array would reach torch as a channels-last tensor, and some
    # user code (.view() after convolutions) works only on the contiguous layout its authors fed it.
    return np.ascontiguousarray((x * (hi - lo) + lo).astype(np.float32))


def verification_inputs(spec: Spec, seed: int = 0) -> list[np.ndarray]:
    """Real images (bundled sample photos, center crops) + random inputs of odd sizes."""
    from .imaging import read_image
    from .sample_images import sample_images

    rng = np.random.default_rng(seed)
    out = []
    for p in sample_images()[:3]:
        rgb = read_image(p).rgb
        h, w = min(96, rgb.shape[0]), min(128, rgb.shape[1])
        y0, x0 = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
        out.append(np.ascontiguousarray(rgb[y0:y0 + h, x0:x0 + w].transpose(2, 0, 1)[None], dtype=np.float32))
    for h, w in ((17, 23), (1, 1), (32, 7)):
        out.append(rng.random((1, spec.in_channels, h, w), dtype=np.float32))
    return [_fit(x, spec) for x in out]


def _fit(x: np.ndarray, spec: Spec) -> np.ndarray:
    m = max(1, spec.size_multiple)
    h = max(spec.min_size, -(-x.shape[2] // m) * m)
    w = max(spec.min_size, -(-x.shape[3] // m) * m)
    if (h, w) == x.shape[2:]:
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, h - x.shape[2]), (0, w - x.shape[3])), mode="reflect" if
                  min(x.shape[2:]) > 1 else "edge")
