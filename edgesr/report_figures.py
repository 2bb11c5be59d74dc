"""The figures a `convert` OUTDIR holds, as report.md lists them (paths relative to the OUTDIR).

Figures are written during conversion (INT8 sensitivity charts beside the INT8 graphs, parity
heatmaps under heatmaps/ for failing comparisons); a reader of report.md should find each one
from the report, with a line saying what it shows.
"""

from __future__ import annotations

from pathlib import PurePath


def figures_md(report: dict) -> list[str]:
    """report.md lines for every figure the report names (none: no section)."""
    items: list[str] = []
    for profile, q in (report.get("int8") or {}).items():
        png = q.get("sensitivity_png") if isinstance(q, dict) else None
        if png:
            items.append(f"- `{png}`: INT8 per-layer sensitivity ({profile} profile): PSNR cost when only that "
                         "layer is INT8, and gain when only it stays float; `*` marks layers kept float")
    for c in (report.get("parity") or {}).get("comparisons", []):
        if c.get("heatmap"):
            rel = f"heatmaps/{PurePath(c['heatmap']).name}"
            items.append(f"- `{rel}`: |difference| of {c.get('test')} vs {c.get('reference')} on its worst input "
                         "(parity failed)")
    if not items:
        return []
    return ["## Figures", "", *items, ""]
