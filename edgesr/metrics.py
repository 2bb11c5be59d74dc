"""PSNR / SSIM, including the Y-channel protocol used by SR papers (BasicSR / MATLAB).

Conventions
-----------
* Inputs are numpy arrays HxWxC (or HxW) holding floats in [0, 1]. uint8 arrays are
  accepted too and read as ``x / 255``.
* ``rgb_to_y`` returns the BT.601 luma of MATLAB's ``rgb2ycbcr`` **in the [0, 255]
  scale** (float64, 16..235 for inputs in [0, 1]); it is not rounded (BasicSR does not
  round it either; MATLAB does when fed uint8).
* ``psnr_y`` / ``ssim_y`` follow BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with
  ``test_y_channel=True``: optionally quantize both images to 8 bit (round half up,
  :func:`edgesr.imaging.quantize`), crop ``crop_border`` pixels from each side, take Y,
  compare with peak 255. Single-channel images are used as is (scaled by 255), as BasicSR
  does.
* SSIM is Wang et al.'s with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  'valid' filtering (no padding), mean over the map; multichannel = mean of per-channel.
* Identical images give ``psnr == inf``.

Pure numpy: no scipy / OpenCV dependency.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "rgb_to_y",
    "psnr",
    "ssim",
    "psnr_y",
    "ssim_y",
    "gaussian_window",
]

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


def _as_float(img: np.ndarray, name: str) -> np.ndarray:
    """float64 view of an image in [0, 1]; uint8 is read as x / 255."""
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name}: expected floats in [0, 1] or uint8, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("images are empty")


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma as MATLAB ``rgb2ycbcr``: ``16 + 65.481 R + 128.553 G + 24.966 B``.

    ``img``: HxWx3 RGB in [0, 1] (or uint8). Returns float64 HxW in the [0, 255] scale.
    """
    a = _as_float(img, "img")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects HxWx3 RGB, got shape {a.shape}")
    return a @ _Y_WEIGHTS + 16.0


def _quantize8(a: np.ndarray) -> np.ndarray:
    from edgesr.imaging import quantize

    return quantize(a, 8).astype(np.float64) / 255.0


def _y255(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 3:
        return rgb_to_y(a)
    if a.ndim == 3 and a.shape[2] == 1:
        return a[..., 0] * 255.0
    if a.ndim == 2:
        return a * 255.0
    raise ValueError(f"expected HxW, HxWx1 or HxWx3, got shape {a.shape}")


def _prepare_y(sr: np.ndarray, hr: np.ndarray, crop_border: int, quantize: bool) -> tuple[np.ndarray, np.ndarray]:
    a = _as_float(sr, "sr")
    b = _as_float(hr, "hr")
    _check_pair(a, b)
    crop_border = int(crop_border)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if quantize:
        a = _quantize8(a)
        b = _quantize8(b)
    if crop_border:
        h, w = a.shape[:2]
        if 2 * crop_border >= min(h, w):
            raise ValueError(f"crop_border {crop_border} leaves nothing of a {h}x{w} image")
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return _y255(a), _y255(b)


def _psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB over all elements (e.g. two RGB model outputs). ``inf`` if identical."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    _check_pair(x, y)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    return _psnr(x, y, float(data_range))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian (as OpenCV ``getGaussianKernel``); SSIM uses its outer product."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r * r) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of 2-D ``x`` with ``outer(g, g)``."""
    k = g.shape[0]
    h, w = x.shape
    rows = np.zeros((h - k + 1, w), dtype=np.float64)
    for i in range(k):
        rows += g[i] * x[i : i + h - k + 1]
    out = np.zeros((h - k + 1, w - k + 1), dtype=np.float64)
    for j in range(k):
        out += g[j] * rows[:, j : j + w - k + 1]
    return out


def _ssim2d(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    g = gaussian_window(11, 1.5)
    if min(a.shape) < g.shape[0]:
        raise ValueError(f"SSIM needs images of at least 11x11 (after cropping), got {a.shape[0]}x{a.shape[1]}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu1 = _filter_valid(a, g)
    mu2 = _filter_valid(b, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(a * a, g) - mu1_sq
    s2 = _filter_valid(b * b, g) - mu2_sq
    s12 = _filter_valid(a * b, g) - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of HxW or HxWxC arrays (mean of per-channel SSIM), 'valid' Gaussian window."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    _check_pair(x, y)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    if x.ndim == 2:
        return _ssim2d(x, y, float(data_range))
    if x.ndim != 3:
        raise ValueError(f"ssim expects HxW or HxWxC, got shape {x.shape}")
    return float(np.mean([_ssim2d(x[..., c], y[..., c], float(data_range)) for c in range(x.shape[2])]))


def psnr_y(sr: np.ndarray, hr: np.ndarray, crop_border: int, *, quantize: bool = True) -> float:
    """Y-channel PSNR (peak 255) with BasicSR's protocol; ``crop_border`` is usually the scale."""
    a, b = _prepare_y(sr, hr, crop_border, quantize)
    return _psnr(a, b, 255.0)


def ssim_y(sr: np.ndarray, hr: np.ndarray, crop_border: int, *, quantize: bool = True) -> float:
    """Y-channel SSIM (data range 255) with BasicSR's protocol."""
    a, b = _prepare_y(sr, hr, crop_border, quantize)
    return _ssim2d(a, b, 255.0)
