"""Content-addressed results for sweeps: a rerun skips what is complete.

A zoo model's result (OUTROOT/results/<name>.json) carries a key: the SHA-256 of everything the
conversion depends on - the edgesr version, the index entry (code reference, kwargs, key, ranges),
the run's settings (INT8, latency), the weights file's bytes and the model code's bytes (every
``.py`` file under the code file's folder and directly in the entry's extra import folders). A
rerun reuses a result whose key matches and whose OUTDIR (for a converted model) is still there;
anything else is converted again. Timeouts, crashes and internal errors are never reused: they
say nothing about the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import __version__
from .fsutil import sha256_file

NOT_REUSED = frozenset({"timeout", "crash", "internal"})
MAX_CODE_FILES = 2000  # a code folder with more .py files than this is keyed by the code file alone


def _code_files(entry) -> list[Path]:
    code = Path(entry.code.rpartition(":")[0])
    files: set[Path] = {code} if code.is_file() else set()
    under = sorted(code.parent.rglob("*.py")) if code.parent.is_dir() else []
    if len(under) <= MAX_CODE_FILES:
        files.update(under)
    for p in entry.paths:
        if Path(p).is_dir():
            files.update(Path(p).glob("*.py"))
    return sorted(files)


def content_key(entry, settings: dict[str, Any]) -> str:
    """SHA-256 (hex) of what converting `entry` with `settings` depends on."""
    h = hashlib.sha256()
    h.update(json.dumps({"edgesr": __version__, "entry": json.loads(entry.to_json()), "settings": settings},
                        sort_keys=True, default=str).encode())
    weights = Path(entry.weights)
    h.update(("weights:" + (sha256_file(weights) if weights.is_file() else "absent")).encode())
    for f in _code_files(entry):
        h.update(f"code:{f}:".encode() + sha256_file(f).encode())
    return h.hexdigest()


def result_path(outroot: Path, name: str) -> Path:
    return Path(outroot) / "results" / f"{name}.json"


def reusable_result(outroot: Path, name: str, key: str) -> dict[str, Any] | None:
    """The stored result of `name` when its key is `key` and it is complete; else None."""
    p = result_path(outroot, name)
    try:
        res = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("key") != key or res.get("category") in NOT_REUSED:
        return None
    if res.get("ok") and not (Path(outroot) / name / "manifest.json").is_file():
        return None
    return res


def stale_outdir(outroot: Path, name: str) -> bool:
    """OUTROOT/<name> exists but no complete result describes it (a killed run's, or one made from
    other inputs): the rerun replaces it (convert's --force rules still refuse a folder edgesr did
    not write)."""
    return os.path.lexists(Path(outroot) / name)
