"""Printing helpers: one JSON object on stdout with --json, a readable table otherwise."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Sequence

from ..errors import one_line
from ..fsutil import json_safe

_emitted = False  # one JSON object per run: an error after the answer is printed adds none


def emit_json(obj: Any) -> None:
    global _emitted
    json.dump(json_safe(obj), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    _emitted = True


def reset_json_state() -> None:
    global _emitted
    _emitted = False


def emit_json_error(message: str, error_type: str, exit_code: int) -> None:
    """A failed `--json` run's stdout: one JSON object with the same line stderr gets
    (nothing when the command already printed its object)."""
    if _emitted:
        return
    emit_json({"ok": False, "error": {"type": error_type, "message": one_line(message), "exit_code": exit_code}})
    sys.stdout.flush()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


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
