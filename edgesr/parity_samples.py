"""Inputs parity compares on (`Sample`): Set5 LR/HR pairs from ../shared, a test-set or image
folder, crops of the bundled sample photos with MATLAB-bicubic LR versions, and smooth random
images of several sizes (see `edgesr.parity` for why smooth)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DatasetError
from .probe_inputs import random_image

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((17, 23), (32, 32), (31, 100))


@dataclass
class Sample:
    name: str
    lr: np.ndarray  # 1xCxHxW float32
    hr: np.ndarray | None = None  # HxWxC float32 in [0, 1], exactly LR size * scale
    kind: str = "image"  # "image" | "random"


def shared_dir() -> Path | None:
    """``$EDGESR_SHARED`` or ``../shared`` beside the checkout, if it exists."""
    env = os.environ.get("EDGESR_SHARED")
    p = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    return p if p.is_dir() else None


def random_samples(sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, channels: int = 3, seed: int = 0,
                   kind: str = "smooth") -> list[Sample]:
    return [Sample(f"random:{h}x{w}", random_image((1, channels, h, w), seed + i, kind), None, "random")
            for i, (h, w) in enumerate(sizes)]


def testset_samples(root: str | Path, scale: int, limit: int | None = None) -> list[Sample]:
    """LR/HR pairs of a test set laid out as DIR/HR + DIR/LR_bicubic/X<s> (see edgesr.datasets)."""
    from .datasets import load_pair, load_testset

    out = []
    for pair in load_testset(root, scale)[:limit]:
        lr, hr = load_pair(pair, scale)
        out.append(Sample(pair.name, _nchw(lr), hr))
    return out


def folder_samples(folder: str | Path, scale: int, limit: int | None = None) -> list[Sample]:
    """A test-set folder (HR/ + LR_bicubic/) with ground truth, else every image in it as LR only."""
    from .imaging import list_images, read_image

    d = Path(folder)
    if (d / "HR").is_dir() and (d / "LR_bicubic").is_dir():
        return testset_samples(d, scale, limit)
    paths = list_images(d) if d.is_dir() else []
    if not paths:
        raise DatasetError(f"{d}: no images to compare on")
    return [Sample(p.stem, _nchw(read_image(p).rgb)) for p in paths[:limit]]


def package_samples(scale: int, limit: int = 3, hr_size: int = 48) -> list[Sample]:
    """Center crops (hr_size*scale square) of the bundled sample photos + MATLAB-bicubic LR."""
    from .imaging import read_image
    from .resize import imresize
    from .sample_images import sample_images

    out = []
    for p in sample_images()[:limit]:
        rgb = read_image(p).rgb
        side = min(hr_size * scale, (min(rgb.shape[:2]) // scale) * scale)
        top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
        hr = np.ascontiguousarray(rgb[top:top + side, left:left + side])
        lr = np.clip(imresize(hr, 1.0 / scale), 0.0, 1.0).astype(np.float32)
        out.append(Sample(f"sample:{p.stem}", _nchw(lr), hr))
    return out


def default_samples(scale: int, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, channels: int = 3,
                    limit: int | None = None, random_kind: str = "smooth") -> list[Sample]:
    """Set5 (from ../shared) or the package sample images, plus random images of `sizes`."""
    images: list[Sample] = []
    if channels == 3:
        root = shared_dir()
        set5 = root / "testsets" / "Set5" if root else None
        if set5 is not None and (set5 / "LR_bicubic" / f"X{scale}").is_dir():
            images = testset_samples(set5, scale, limit)
        else:
            try:
                images = package_samples(scale, limit or 3)
            except DatasetError:
                images = []
    return images + random_samples(sizes, channels, kind=random_kind)


def _nchw(rgb: np.ndarray) -> np.ndarray:
    a = rgb if rgb.ndim == 3 else rgb[..., None]
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None], dtype=np.float32)
