"""Printing helpers: one JSON object on stdout with --json, a readable table otherwise."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Sequence

from ..errors import one_line
from ..fsutil import json_safe


def emit_json(obj: Any) -> None:
    json.dump(json_safe(obj), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(format_table(headers, rows))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"
    # a cell is one line whatever a file or tensor name holds (newlines, escape sequences)
    return "" if v is None else one_line(v)
