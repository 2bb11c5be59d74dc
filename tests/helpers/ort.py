"""ONNX Runtime sessions built here, not through edgesr: an independent reference for tests that
check what edgesr exported (edgesr's own sessions come from edgesr.backends.ort_session)."""

from __future__ import annotations

import os
from typing import Any


def reference_session(model: str | os.PathLike | bytes, threads: int | None = 1) -> Any:
    """A plain CPU ``onnxruntime.InferenceSession`` (ORT's default graph optimizations), quiet
    below errors; `threads` intra-op threads (None: ORT's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])
