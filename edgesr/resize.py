"""MATLAB-compatible ``imresize`` (bicubic, with MATLAB's antialiasing when downscaling).

Standard SR benchmarks (Set5, Set14, DIV2K ``LR_bicubic``) were made with MATLAB's
``imresize(hr, 1/s, 'bicubic')``; PIL / OpenCV / torch bicubic differ from it by up to
several grey levels. This module reproduces MATLAB's algorithm in numpy, float64:

* kernel: Keys cubic convolution with ``a = -0.5``, support 4;
* output pixel ``x`` (1-based) samples input coordinate ``u = x/scale + 0.5*(1 - 1/scale)``;
* downscaling (``scale < 1``) with ``antialiasing=True`` stretches the kernel by ``1/scale``
  (``h(x) = scale * cubic(scale * x)``, support ``4/scale``);
* each output pixel's weights are normalised to sum to 1;
* out-of-range taps are mirrored as ``[1..n, n..1]`` (half-sample symmetric padding,
  the edge pixel repeated), taken modulo ``2n`` so tiny inputs work too;
* the two axes are resized one after the other, the one with the smaller scale first
  (rows first on a tie), exactly as MATLAB orders them.

Integer inputs (uint8/uint16) are handled as MATLAB does: each axis pass is computed in
float64 and converted back to the input's type (saturated, rounded half away from zero)
*before the next pass*. This intermediate rounding matters: MATLAB-made LR sets (Set5
``LR_bicubic`` here) are reproduced bit-exactly from uint8 HR only with it; resizing the
same image as float and rounding once differs in ~15% of pixels by 1-2 levels. Float
inputs come back as float, unrounded and unclipped (bicubic overshoots [0, 1] slightly).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = ["imresize", "cubic", "contributions"]

_KERNEL_WIDTH = 4.0
# Guards ceil(scale * n) against floating error, e.g. 0.1 * 30 == 3.0000000000000004.
_SIZE_EPS = 1e-9


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


def contributions(
    in_length: int, out_length: int, scale: float, antialiasing: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based (already mirrored) input indices, both ``(out_length, P)``.

    Output pixel ``i`` is ``sum_p weights[i, p] * input[indices[i, p]]``.
    """
    if in_length < 1 or out_length < 1:
        raise ValueError(f"lengths must be >= 1, got in={in_length}, out={out_length}")
    kernel: Callable[[np.ndarray], np.ndarray] = cubic
    width = _KERNEL_WIDTH
    if scale < 1 and antialiasing:
        width = _KERNEL_WIDTH / scale

        def kernel(d: np.ndarray) -> np.ndarray:  # noqa: F811 - MATLAB's antialiasing: the kernel widened
            return scale * cubic(scale * d)
    x: np.ndarray = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    weights = kernel(u[:, None] - idx)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # MATLAB: aux = [1:n, n:-1:1]; indices = aux(mod(indices - 1, 2n) + 1)
    n = in_length
    m = np.mod(idx.astype(np.int64) - 1, 2 * n)  # 0 .. 2n-1
    indices = np.where(m < n, m, 2 * n - 1 - m)
    # MATLAB then drops all-zero weight columns; they contribute nothing here either,
    # but dropping keeps the gather loop short.
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _resize_axis(a: np.ndarray, axis: int, out_length: int, scale: float, antialiasing: bool) -> np.ndarray:
    weights, indices = contributions(a.shape[axis], out_length, scale, antialiasing)
    moved = np.moveaxis(a, axis, 0)
    out = np.zeros((out_length,) + moved.shape[1:], dtype=np.float64)
    extra = (slice(None),) + (None,) * (moved.ndim - 1)
    for p in range(weights.shape[1]):
        out += weights[:, p][extra] * moved[indices[:, p]]
    return np.moveaxis(out, 0, axis)


def _to_integer(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    x = np.clip(x, info.min, info.max)
    # round half away from zero, as MATLAB's conversion to integer types does
    r = np.sign(x) * np.floor(np.abs(x) + 0.5)
    return r.astype(dtype)


def imresize(
    img: np.ndarray,
    scale: float | None = None,
    *,
    output_shape: Sequence[int] | None = None,
    antialiasing: bool = True,
) -> np.ndarray:
    """Resize ``img`` (HxW or HxWxC) like MATLAB ``imresize(img, scale, 'bicubic')``.

    Give exactly one of ``scale`` (a positive number; output size ``ceil(scale * size)``
    and the kernel uses ``scale`` itself, as MATLAB does) or ``output_shape`` ``(H, W)``
    (per-axis scale ``out / in``). ``antialiasing`` only matters when downscaling.
    """
    a = np.asarray(img)
    if a.ndim not in (2, 3):
        raise ValueError(f"imresize expects HxW or HxWxC, got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"imresize got an empty image of shape {a.shape}")
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale or output_shape")
    in_h, in_w = a.shape[:2]
    if scale is not None:
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        scales = (scale, scale)
        out_h = max(1, math.ceil(scale * in_h - _SIZE_EPS))
        out_w = max(1, math.ceil(scale * in_w - _SIZE_EPS))
    elif output_shape is not None:
        if len(output_shape) != 2:
            raise ValueError(f"output_shape must be (H, W), got {output_shape}")
        out_h, out_w = (int(v) for v in output_shape)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"output_shape must be positive, got {output_shape}")
        scales = (out_h / in_h, out_w / in_w)

    in_dtype = a.dtype
    integer = np.issubdtype(in_dtype, np.integer)
    out = a.astype(np.float64, copy=False)
    sizes = (out_h, out_w)
    # MATLAB: resize the dimension with the smallest scale first (rows on a tie).
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    for axis in order:
        out = _resize_axis(out, axis, sizes[axis], scales[axis], antialiasing)
        if integer:
            # MATLAB's per-axis pass returns the input's class: integer images are
            # rounded and saturated after *each* pass, not only at the end.
            out = _to_integer(out, in_dtype).astype(np.float64)

    if integer:
        return out.astype(in_dtype)
    if np.issubdtype(in_dtype, np.floating):
        return out.astype(in_dtype, copy=False)
    return out
