"""SR test-set discovery for the common layout::

    DIR/HR/<name>.png
    DIR/LR_bicubic/X<s>/<name>x<s>.png      (``<name>.png`` is accepted too)

and the published evaluation protocol's HR crop (top-left, to LR size * scale).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgesr.errors import DatasetError, ScaleMismatch
from edgesr.imaging import IMAGE_EXTENSIONS, list_images, read_image

__all__ = ["Pair", "load_testset", "crop_hr_to_lr", "load_pair"]


@dataclass(frozen=True)
class Pair:
    """One evaluation pair: ``name`` is the HR file's stem."""

    name: str
    lr_path: Path
    hr_path: Path


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ScaleMismatch(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def load_testset(root: str | os.PathLike, scale: int) -> list[Pair]:
    """Pairs of ``root`` at ``scale``, sorted by HR file name.

    Raises DatasetError when ``root``, ``root/HR`` or ``root/LR_bicubic/X<scale>`` is
    missing, when HR holds no images, or (listing them) when HR images have no LR file.
    """
    scale = _check_scale(scale)
    d = Path(root)
    if not d.is_dir():
        raise DatasetError(f"{d}: test set folder does not exist")
    hr_dir = d / "HR"
    if not hr_dir.is_dir():
        raise DatasetError(f"{d}: no HR/ folder (expected {hr_dir}/<name>.png)")
    lr_root = d / "LR_bicubic"
    lr_dir = lr_root / f"X{scale}"
    if not lr_dir.is_dir():
        have = sorted(p.name for p in lr_root.iterdir() if p.is_dir()) if lr_root.is_dir() else []
        hint = f"; found {', '.join(have)}" if have else ""
        raise DatasetError(f"{d}: no LR_bicubic/X{scale}/ folder for scale {scale}{hint}")
    hrs = list_images(hr_dir)
    if not hrs:
        raise DatasetError(f"{hr_dir}: no images (looked for {', '.join(IMAGE_EXTENSIONS)})")

    # LR files by lower-cased stem; several extensions of one stem: keep the sorted first.
    lr_by_stem: dict[str, Path] = {}
    for p in list_images(lr_dir):
        lr_by_stem.setdefault(p.stem.lower(), p)

    pairs: list[Pair] = []
    missing: list[str] = []
    for hr in hrs:
        lr = lr_by_stem.get(f"{hr.stem}x{scale}".lower()) or lr_by_stem.get(hr.stem.lower())
        if lr is None:
            missing.append(hr.name)
        else:
            pairs.append(Pair(name=hr.stem, lr_path=lr, hr_path=hr))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DatasetError(
            f"{lr_dir}: no LR image for {len(missing)} of {len(hrs)} HR images ({shown}); "
            f"expected <name>x{scale}.png"
        )
    return pairs


def crop_hr_to_lr(hr: np.ndarray, lr: np.ndarray | tuple[int, int], scale: int) -> np.ndarray:
    """HR cropped (top-left) to exactly ``LR size * scale``, as the published protocol does.

    ``lr`` is the LR image (or its ``(H, W)``). Raises DatasetError when the two cannot be
    a pair at this scale: HR smaller than LR * scale, or at least ``scale`` pixels larger
    in either dimension (a wrong scale or a mismatched file).
    """
    scale = _check_scale(scale)
    lh, lw = (lr.shape[:2] if isinstance(lr, np.ndarray) else tuple(int(v) for v in lr))
    hh, hw = hr.shape[:2]
    th, tw = lh * scale, lw * scale
    if not (th <= hh < th + scale and tw <= hw < tw + scale):
        raise DatasetError(
            f"HR {hh}x{hw} does not match LR {lh}x{lw} at scale {scale} "
            f"(expected HR of {th}..{th + scale - 1} x {tw}..{tw + scale - 1}); wrong scale or mismatched files"
        )
    return hr[:th, :tw]


def load_pair(pair: Pair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR rgb, HR rgb cropped to LR * scale), float32 HxWx3 in [0, 1]."""
    lr = read_image(pair.lr_path).rgb
    hr = read_image(pair.hr_path).rgb
    try:
        return lr, crop_hr_to_lr(hr, lr, scale)
    except DatasetError as e:
        raise DatasetError(f"{pair.name}: {e}") from None
