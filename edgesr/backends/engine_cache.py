"""Engine cache: an engine is reused only when everything that shaped it is unchanged.

The cache key is the sha256 of a canonical JSON document holding the ONNX content hash,
the resolved optimization-profile shapes, the precision, the TensorRT flavour and
version, the build target (GPU name / compute capability, or the TensorRT-RTX compute
capability set) and the builder options. Every engine has a sidecar ``<engine>.json``
next to it recording the key, those components, the engine's own sha256 and its I/O
tensors. A cached engine is a hit when its sidecar parses, carries the same key and the
engine file still hashes to the recorded sha256; anything else is stale and rebuilt.

Writes are atomic (engine first, sidecar last): a crash leaves either the old pair, or
a new engine without a matching sidecar, which the next lookup treats as stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from edgesr.fsutil import atomic_write_bytes, atomic_write_json, sha256_file

SIDECAR_SCHEMA = "edgesr.trt-engine/1"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(components: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the key components."""
    return hashlib.sha256(canonical_json(dict(components)).encode("utf-8")).hexdigest()


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of an engine, or None when it is missing or unreadable."""
    sp = sidecar_path(engine_path)
    try:
        data = json.loads(sp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA:
        return None
    return data


def lookup(engine_path: str | os.PathLike, key: str, *, verify_hash: bool = True) -> dict[str, Any] | None:
    """Return the sidecar when `engine_path` is a valid cached engine for `key`, else None."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return None
    meta = read_sidecar(engine_path)
    if meta is None or meta.get("cache_key") != key:
        return None
    eng = meta.get("engine") or {}
    if eng.get("bytes") != engine_path.stat().st_size:
        return None
    if verify_hash and eng.get("sha256") != sha256_file(engine_path):
        return None
    return meta


def store(engine_path: str | os.PathLike, engine_bytes: bytes | memoryview, sidecar: dict[str, Any]) -> Path:
    """Write engine then sidecar atomically; fills the sidecar's engine hash/size. Returns sidecar path."""
    engine_path = Path(engine_path)
    data = bytes(engine_bytes)
    sidecar = dict(sidecar)
    sidecar["schema"] = SIDECAR_SCHEMA
    sidecar["engine"] = {
        "file": engine_path.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_bytes(engine_path, data)
    return atomic_write_json(sidecar_path(engine_path), _schema_first(sidecar))


def _schema_first(d: dict[str, Any]) -> dict[str, Any]:
    order = ["schema", "cache_key", "engine"]
    out = {k: d[k] for k in order if k in d}
    out.update({k: v for k, v in d.items() if k not in out})
    return out
