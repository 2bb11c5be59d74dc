"""The zoo index: one [[model]] entry per user model (code FILE.py:NAME, weights, kwargs, the
author's input range), read and checked from TOML (:func:`read_index`), and the failure categories
a zoo result can carry. :mod:`edgesr.zoo` converts the entries; :mod:`edgesr.zoo_summary` tabulates
their results."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import DatasetError, one_line

ENV_ROOT = "EDGESR_ZOO_ROOT"
DEFAULT_TIMEOUT_S = 1200
# Failure categories, in pipeline order (each result has exactly one, or none when ok).
CATEGORIES = {
    "weights-absent": "the weights file is not there",
    "missing-import": "the model code imports a package that is not installed (or needs CUDA)",
    "needs-cuda": "the model code calls CUDA (e.g. .cuda() while building); this machine has no GPU",
    "user-code": "the model code fails to import, build or run",
    "weights": "the weights cannot be loaded safely or do not fit the code",
    "implausible": "no input convention gives a plausible super-resolution",
    "range-mismatch": "the inferred input range differs from the index's",
    "export": "ONNX export failed",
    "parity": "ONNX Runtime differs from the author's PyTorch module by more than 1e-4",
    "int8": "INT8 QDQ graph could not be built",
    "below-bicubic": "a converted graph (fp32 or INT8) scores below bicubic on Set5: `edgesr eval` refuses it",
    "timeout": "the model did not finish in time",
    "crash": "the model's process died",
    "internal": "an unexpected error in edgesr",
}


@dataclass
class ZooEntry:
    name: str
    code: str  # absolute FILE.py:NAME
    weights: Path
    paths: list[Path] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    strict: bool = True
    input_range: float | None = None
    scale: int | None = None
    range_finding: float | None = None  # the range evidence says, where it contradicts input_range
    range_evidence: str | None = None

    def to_json(self) -> str:
        d = asdict(self)
        d["weights"] = str(self.weights)
        d["paths"] = [str(p) for p in self.paths]
        return json.dumps(d)

    def user_options(self) -> dict[str, Any]:
        """This entry as --model options (`edgesr.resolve.load_user_code`, `ConvertOptions.with_user_model`).
        No input range: the index's `input_range` is what the zoo checks the measured one against."""
        return {"ref": self.code, "kwargs": self.kwargs, "strict": self.strict, "key": self.key,
                "extra_paths": tuple(self.paths), "input_range": None}

    @classmethod
    def from_json(cls, text: str) -> "ZooEntry":
        d = json.loads(text)
        d["weights"] = Path(d["weights"])
        d["paths"] = [Path(p) for p in d["paths"]]
        return cls(**d)


MAX_INDEX_BYTES = 16 << 20  # an index of a thousand models is ~200 KiB
MAX_INDEX_DEPTH = 16  # [[model]] tables with kwargs tables of lists: 4 levels
ZOO_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}")  # each becomes OUTROOT/<name>/


def _optional(m: dict, key: str, kind: type, where: str) -> Any:
    """m[key] checked to be of `kind` (an int where a float is asked for is fine), or None."""
    v = m.get(key)
    if v is None:
        return None
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v, ok = float(v), True
    if kind is float and ok and not math.isfinite(v):
        ok = False
    if kind is int and ok and not 1 <= v <= 32:
        ok = False
    if not ok:
        want = {int: "an integer in [1, 32]", float: "a finite number", str: "a string", bool: "true or false"}[kind]
        raise DatasetError(f"{where}: '{key}' must be {want}, got {one_line(repr(v)[:40])}")
    return v


def read_index(index: str | Path) -> list[ZooEntry]:
    """Parse and check a zoo index (paths resolved; a missing weights file is not an error here)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib

    from .errors import quoted
    from .limits import json_depth

    index = Path(index)
    if not index.is_file():
        raise DatasetError(f"zoo index {quoted(index)} not found")
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise DatasetError(f"zoo index {quoted(index)} is larger than {MAX_INDEX_BYTES >> 20} MiB; an index lists "
                           "models, not their weights")
    try:
        data = tomllib.loads(index.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"zoo index {quoted(index)} is not valid TOML: {one_line(e)}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise DatasetError(f"zoo index {quoted(index)} is nested deeper than any index needs") from None
    if json_depth(data) > MAX_INDEX_DEPTH:
        raise DatasetError(f"zoo index {quoted(index)} is nested more than {MAX_INDEX_DEPTH} levels deep")
    root_text = os.environ.get(ENV_ROOT) or data.get("root", ".")
    if not isinstance(root_text, str):
        raise DatasetError(f"zoo index {quoted(index)}: 'root' must be a string (a folder)")
    root = (index.parent / root_text).resolve() if not Path(root_text).is_absolute() else Path(root_text)
    if not root.is_dir():
        raise DatasetError(f"zoo index {quoted(index)}: root {quoted(root)} is not a folder (set {ENV_ROOT} to "
                           "where the zoo is)")
    models = data.get("model")
    if not isinstance(models, list) or not models:
        raise DatasetError(f"zoo index {quoted(index)} has no [[model]] entries")
    default_scale = _optional(data, "scale", int, f"zoo index {quoted(index.name)}")
    out, seen = [], set()
    for i, m in enumerate(models):
        where = f"zoo index {quoted(index.name)}, model #{i + 1}"
        if not isinstance(m, dict):
            raise DatasetError(f"{where}: each model must be a [[model]] table, got {type(m).__name__}")
        for k in ("name", "code", "weights"):
            if not isinstance(m.get(k), str) or not m[k]:
                raise DatasetError(f"{where}: '{k}' must be a non-empty string")
        name = m["name"]
        if name in seen or not ZOO_NAME.fullmatch(name) or name in (".", ".."):
            raise DatasetError(f"{where}: name {quoted(name)} is repeated or not a plain folder name (letters, "
                               "digits, '.', '_', '+', '-'; at most 100 characters, not starting with '.')")
        seen.add(name)
        where = f"{where} ({name})"
        file, sep, attr = m["code"].rpartition(":")
        if not sep:
            raise DatasetError(f"{where}: code must be FILE.py:NAME, got {quoted(m['code'])}")
        kwargs = m.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise DatasetError(f"{where}: kwargs must be a table")
        paths = m.get("paths", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
            raise DatasetError(f"{where}: paths must be a list of folder names")
        scale = _optional(m, "scale", int, where)
        out.append(ZooEntry(
            name=name, code=f"{root / file}:{attr}", weights=root / m["weights"],
            paths=[root / p for p in paths], kwargs=kwargs, key=_optional(m, "key", str, where),
            strict=_optional(m, "strict", bool, where) is not False,
            input_range=_optional(m, "input_range", float, where),
            scale=scale if scale is not None else default_scale,
            range_finding=_optional(m, "range_finding", float, where),
            range_evidence=_optional(m, "range_evidence", str, where)))
        if (out[-1].range_finding is None) != (out[-1].range_evidence is None):
            raise DatasetError(f"{where} ({name}): range_finding and range_evidence go together")
    return out
