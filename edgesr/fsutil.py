"""Atomic file writes: a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto `final` on success.

    For writers that insist on a path (onnx.save, ORT, TensorRT serializers).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{temp_stem(final.name)}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts follow the umask
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# mkstemp adds "." + name + "." + 8 random characters + ".tmp" (14 bytes) to the final name;
# a name this long or longer is shortened (keeping a hash) so the temporary name stays legal.
_TEMP_STEM_MAX = 255 - 14


def temp_stem(name: str, max_bytes: int = _TEMP_STEM_MAX) -> str:
    """`name`, or for names near the file system's 255-byte limit a shortened form
    ``<head>~<hash>`` that keeps the temporary file's name legal (and recognisable);
    `max_bytes`: what the temporary name's own additions leave of the 255 bytes."""
    raw = os.fsencode(name)
    if len(raw) <= max_bytes:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return raw[: max_bytes - 13].decode("utf-8", "ignore") + "~" + digest


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"))


def text_name(name: str | os.PathLike) -> str:
    """A file name as text that can be stored (JSON, ONNX metadata, Markdown: UTF-8 only): bytes
    of the name that are not UTF-8 (Python keeps them as surrogates) become ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def json_safe(obj: Any) -> Any:
    """Replace NaN/Infinity (not JSON) by the strings "nan"/"inf"/"-inf", recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(final: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (no NaN/Infinity literals, which many parsers reject)."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    return atomic_write_text(final, text + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
