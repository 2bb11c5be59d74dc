"""Error heatmap PNGs (|reference - output|) for failing comparisons."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def save_heatmap(ref: np.ndarray, out: np.ndarray, path: str | Path, title: str = "", min_side: int = 256) -> Path:
    """PNG of |ref - out| (max over channels, first batch item: its maximum is the comparison's
    max abs), nearest-upscaled so the short side is at least `min_side` pixels, with a colour bar."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from .fsutil import atomic_path

    d = np.abs(ref.astype(np.float64) - out.astype(np.float64))[0].max(axis=0)
    f = max(1, math.ceil(min_side / max(1, min(d.shape))))
    big = np.repeat(np.repeat(d, f, axis=0), f, axis=1)
    h, w = big.shape
    fig = Figure(figsize=(min(12.0, 2.0 + w / 100), min(12.0, 1.0 + h / 100)), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    # a few outlier pixels would turn the rest black: the colours stop at the 99.5th percentile
    # (brighter = beyond it); the title keeps the true maximum
    top = float(d.max()) or 1.0
    clip = float(np.percentile(d, 99.5))
    vmax = clip if 0 < clip < top else top
    im = ax.imshow(big, cmap="magma", interpolation="nearest", vmin=0.0, vmax=vmax)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, extend="max" if vmax < top else "neither")
    cb.set_label("|difference|, max over channels" + (" (to p99.5)" if vmax < top else ""), fontsize=8)
    ax.set_title((title + "\n" if title else "") + f"max {d.max():.3g} (= {255 * d.max():.1f} of 255), "
                 f"mean {d.mean():.3g}" + (f", drawn x{f}" if f > 1 else ""), fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path
