"""Where in the user's own code an exception was raised (for one-line errors about user model code)."""

from __future__ import annotations

import traceback
from pathlib import Path


def is_under(file: str | None, roots: list[Path]) -> bool:
    if not file:
        return False
    p = Path(file).resolve()
    return any(r in p.parents for r in roots)


def user_frame(e: BaseException, roots: list[Path]) -> str | None:
    """``file.py:LINE in func`` of the innermost traceback frame inside the user's folders."""
    hit = None
    for fs in traceback.extract_tb(e.__traceback__):
        if is_under(fs.filename, roots):
            hit = f"{Path(fs.filename).name}:{fs.lineno} in {fs.name}"
    if hit is None and isinstance(e, SyntaxError) and e.filename and is_under(e.filename, roots):
        hit = f"{Path(e.filename).name}:{e.lineno}"
    return hit
