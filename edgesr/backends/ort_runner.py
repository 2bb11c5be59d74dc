"""ONNX Runtime runner (CPU by default)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ExportError

GRAPH_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                    "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def session_options(threads: int | None = None, graph_opt: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPT_LEVELS[graph_opt])
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class OrtRunner:
    def __init__(self, model: str | os.PathLike | bytes, name: str | None = None, threads: int | None = None,
                 graph_opt: str = "all", providers: list[str] | None = None):
        import onnxruntime as ort

        self.path = None if isinstance(model, bytes) else Path(model)
        self.name = name or f"ort:{self.path.name if self.path else 'model'}"
        try:
            self.session = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model),
                sess_options=session_options(threads, graph_opt),
                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ExportError(f"ONNX Runtime cannot load {self.path or 'model'}: {str(e).splitlines()[0][:300]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.input_type = self.session.get_inputs()[0].type

    def run(self, x: np.ndarray) -> np.ndarray:
        dtype = np.float16 if "float16" in self.input_type else np.float32
        y = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=dtype)})[0]
        return y.astype(np.float32, copy=False)
