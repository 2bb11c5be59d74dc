"""Limits on what an untrusted input may make edgesr spend, checked before the work.

A checkpoint, manifest or model file declares sizes (tensor shapes, record lengths, nesting,
key counts) that decide how much memory and time reading it costs. edgesr compares those
declarations with the limits here *before* allocating, so peak memory and work are bounded
by these settings, not by whatever a file claims. Each limit has a default and an
environment variable that raises (or lowers) it; the error naming a limit names its variable.

| limit | default | environment variable |
|---|---|---|
| bytes of tensor data in one checkpoint | min(4 GiB, 1/4 of RAM) | ``EDGESR_MAX_CHECKPOINT_MB`` |
| tensors (keys / storages) in one checkpoint | 50,000 | ``EDGESR_MAX_TENSORS`` |
| inflation ratio of a compressed checkpoint record | 100 | (fixed: torch.save stores records uncompressed) |
| JSON nesting depth (manifest, ONNX metadata, safetensors header) | 64 | (fixed) |
| manifest.json size | 16 MiB | (fixed) |
| bytes of one bundle artifact or ncnn .bin (held in memory) | min(4 GiB, 1/4 of RAM) | ``EDGESR_MAX_ARTIFACT_MB`` |
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import EdgesrError

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_MAX_TENSORS = 50_000
MAX_INFLATION_RATIO = 100
MAX_JSON_DEPTH = 64
MAX_MANIFEST_BYTES = 16 * MiB
# A safetensors header entry needs ~60 bytes plus its name; 320 bytes a tensor is generous.
HEADER_BYTES_PER_TENSOR = 320


def physical_memory() -> int | None:
    """Total RAM in bytes, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def default_checkpoint_bytes() -> int:
    ram = physical_memory()
    return 4 * GiB if ram is None else max(256 * MiB, min(4 * GiB, ram // 4))


@dataclass(frozen=True)
class CheckpointLimits:
    """What one checkpoint may declare: tensor data bytes and tensor count."""

    max_bytes: int
    max_tensors: int = DEFAULT_MAX_TENSORS

    @property
    def max_header_bytes(self) -> int:
        """Largest safetensors JSON header read (it lists every tensor)."""
        return max(MiB, self.max_tensors * HEADER_BYTES_PER_TENSOR)

    @classmethod
    def from_env(cls) -> "CheckpointLimits":
        mb = _env_number("EDGESR_MAX_CHECKPOINT_MB")
        n = _env_number("EDGESR_MAX_TENSORS")
        return cls(max_bytes=int(mb * MiB) if mb is not None else default_checkpoint_bytes(),
                   max_tensors=int(n) if n is not None else DEFAULT_MAX_TENSORS)

    def bytes_hint(self) -> str:
        return f"the limit is {self.max_bytes / MiB:.0f} MiB; set EDGESR_MAX_CHECKPOINT_MB to raise it"

    def tensors_hint(self) -> str:
        return f"the limit is {self.max_tensors}; set EDGESR_MAX_TENSORS to raise it"


def max_artifact_bytes() -> int:
    """Largest bundle artifact edgesr reads (its bytes are held in memory to be loaded as hashed)."""
    mb = _env_number("EDGESR_MAX_ARTIFACT_MB")
    return int(mb * MiB) if mb is not None else default_checkpoint_bytes()


def _env_number(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not (v >= 1 and v < 1e15):  # also rejects NaN and inf
        raise EdgesrError(f"environment variable {name} must be a number >= 1, got {raw!r}")
    return v


def json_depth(obj: object) -> int:
    """Nesting depth of a parsed JSON value (iterative: never recursion-limited)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v)
    return depth


def load_json_bounded(text: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH):
    """json.loads that refuses NaN/Infinity and nesting deeper than `max_depth` with a
    ValueError naming `what` (json.JSONDecodeError, a ValueError, for malformed text)."""
    import json

    def bad_constant(name: str):
        raise ValueError(f"non-standard JSON constant {name} (C++/JavaScript JSON parsers reject it)")

    try:
        obj = json.loads(text, parse_constant=bad_constant)
    except RecursionError:  # the C parser stops cleanly at the interpreter's recursion limit
        raise ValueError(f"{what} is nested more than {max_depth} levels deep") from None
    if json_depth(obj) > max_depth:
        raise ValueError(f"{what} is nested more than {max_depth} levels deep")
    return obj


def check_inference_size(h: int, w: int, *, scale: int, channels: int = 3, batch: int = 1,
                         what: str = "size") -> None:
    """Refuse an input size whose float32 input and output alone need more than half of this
    machine's RAM (the model's activations come on top), before anything is allocated."""
    ram = physical_memory()
    need = 4 * batch * channels * h * w * (1 + scale * scale)
    if ram is not None and need > ram // 2:
        from .errors import LimitExceeded

        raise LimitExceeded(f"{what} {h}x{w}" + (f" x batch {batch}" if batch > 1 else "")
                            + f" at x{scale} needs {need / GiB:.1f} GiB for its float32 input and output alone, "
                            f"more than half of this machine's {ram / GiB:.1f} GiB; use a smaller size")
