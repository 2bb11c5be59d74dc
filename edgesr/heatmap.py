"""Error heatmap PNGs (|reference - output|) for failing comparisons."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def save_heatmap(ref: np.ndarray, out: np.ndarray, path: str | Path, title: str = "", min_side: int = 256) -> Path:
    """PNG of |ref - out| (mean over channels, first batch item), nearest-upscaled so the short
    side is at least `min_side` pixels, with a colour bar."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from .fsutil import atomic_path

    d = np.abs(ref.astype(np.float64) - out.astype(np.float64))[0].mean(axis=0)
    f = max(1, math.ceil(min_side / max(1, min(d.shape))))
    big = np.repeat(np.repeat(d, f, axis=0), f, axis=1)
    h, w = big.shape
    fig = Figure(figsize=(min(12.0, 2.0 + w / 100), min(12.0, 1.0 + h / 100)), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(big, cmap="magma", interpolation="nearest", vmin=0.0, vmax=float(d.max()) or 1.0)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label("|difference|, mean over channels")
    ax.set_title((title + "\n" if title else "") + f"max {d.max():.3g}, mean {d.mean():.3g}"
                 + (f", upscaled x{f}" if f > 1 else ""), fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path
