"""Benchmark-protocol evaluation: Y-channel PSNR/SSIM as the published SR tables report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .datasets import crop_hr_to_lr, load_testset
from .errors import DatasetError, ImageError
from .imaging import read_image
from .metrics import psnr_y, ssim_y


@dataclass
class ImageScore:
    name: str
    psnr_y: float
    ssim_y: float


@dataclass
class EvalResult:
    testset: str
    scale: int
    backend: str
    images: list[ImageScore] = field(default_factory=list)

    @property
    def psnr_y(self) -> float:
        return float(np.mean([i.psnr_y for i in self.images]))

    @property
    def ssim_y(self) -> float:
        return float(np.mean([i.ssim_y for i in self.images]))

    def to_dict(self) -> dict:
        return {"testset": self.testset, "scale": self.scale, "backend": self.backend,
                "psnr_y": round(self.psnr_y, 4), "ssim_y": round(self.ssim_y, 5),
                "images": [asdict(i) for i in self.images]}


def super_resolve(runner, rgb: np.ndarray, spec=None) -> np.ndarray:
    """HxWx3 float [0,1] -> SR HxWx3 float (unclipped) through any Runner. With a `spec`, an
    image below the model's minimum size (or not a multiple it needs) is padded (reflect)
    first and the output cropped back, so no backend sees an input it cannot take."""
    h, w = rgb.shape[:2]
    if spec is not None:
        from .tiling import pad_to_rules

        rgb = pad_to_rules(rgb, spec.min_size, spec.size_multiple)
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
    y = runner.run(x)[0].transpose(1, 2, 0)
    if spec is not None and rgb.shape[:2] != (h, w):
        y = y[: h * spec.scale, : w * spec.scale]
    return y


def evaluate(runner, testset: str | Path, scale: int, backend: str = "",
             progress: Callable[[str], None] | None = None, spec=None) -> EvalResult:
    result = EvalResult(testset=str(testset), scale=scale, backend=backend or getattr(runner, "name", ""))
    for pair in load_testset(testset, scale):
        lr = read_image(pair.lr_path).rgb
        hr = read_image(pair.hr_path).rgb
        sr = super_resolve(runner, lr, spec)
        if sr.shape[0] != lr.shape[0] * scale or sr.shape[1] != lr.shape[1] * scale:
            raise ImageError(f"model output {sr.shape[:2]} is not {scale}x the input {lr.shape[:2]}: "
                             f"wrong --scale for this model?")
        hr = crop_hr_to_lr(hr, lr, scale)
        try:
            result.images.append(ImageScore(pair.name, psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)))
        except ValueError as e:  # e.g. a 1x1 LR image: nothing is left after the border crop
            raise DatasetError(f"{pair.lr_path}: cannot score this pair ({e}); the protocol crops {scale} px "
                               f"per border and SSIM needs 11x11 pixels after that") from None
        if progress:
            progress(pair.name)
    return result
