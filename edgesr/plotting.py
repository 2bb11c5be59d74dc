"""Small helpers that keep edgesr's charts readable: point labels that do not overlap each other,
and log axes labelled with plain numbers (``20``, ``50``, ``100``) rather than ``2 x 10^1``."""

from __future__ import annotations

from typing import Sequence


def plain_log_ticks(ax, axes: str = "xy") -> None:
    """Label log-scaled axes with plain numbers (minor ticks too, where the span is under a decade)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def fmt(v, _pos) -> str:
        return f"{v:g}"

    for name in axes:
        axis = ax.xaxis if name == "x" else ax.yaxis
        axis.set_major_formatter(FuncFormatter(fmt))
        lo, hi = ax.get_xlim() if name == "x" else ax.get_ylim()
        # under two decades the few major ticks need the minor ones labelled (20, 30, ... 90);
        # over that, labelled minor ticks would crowd the axis
        axis.set_minor_formatter(FuncFormatter(fmt) if lo > 0 and hi / lo < 100 else NullFormatter())


def place_labels(ax, points: Sequence[tuple[float, float, str]], fontsize: float = 6.5) -> None:
    """Annotate each (x, y, text) next to its point, moving a label up or down (with a thin
    leader line) when it would overlap one already placed. Call after the axes limits are final."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed: list = []  # window extents of the labels drawn so far
    frame = ax.get_window_extent(renderer)
    scale = fig.dpi / 72.0  # display pixels per point
    for x, y, text in sorted(points, key=lambda p: (-p[1], p[0])):
        probe = ax.annotate(text, (x, y), xytext=(4, 2), textcoords="offset points", fontsize=fontsize)
        box = probe.get_window_extent(renderer)
        w, h = box.width / scale, box.height / scale
        choice = None
        for k in range(0, 12):
            for dy in ((2 - k * h, 2 + k * h) if k else (2,)):
                for dx in (4, -4 - w):
                    probe.xyann = (dx, dy)
                    bb = probe.get_window_extent(renderer)
                    inside = frame.x0 <= bb.x0 and bb.x1 <= frame.x1 and frame.y0 <= bb.y0 and bb.y1 <= frame.y1
                    if inside and not any(bb.overlaps(o) for o in placed):
                        choice = (dx, dy, bb)
                        break
                if choice:
                    break
            if choice:
                break
        probe.remove()
        dx, dy, bb = choice or (4, 2, box)
        moved = (dx, dy) != (4, 2)
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="0.45", shrinkA=0, shrinkB=3) if moved else None)
        placed.append(bb)
