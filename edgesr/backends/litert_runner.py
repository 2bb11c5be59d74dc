"""LiteRT (TensorFlow Lite) interpreter runner for .tflite files written by edgesr.

The files take NHWC input of one fixed size (see edgesr.export.litert); the runner takes the
edgesr convention (NCHW float32 in the model's value range), transposes, quantizes the input
and dequantizes the output of full-integer INT8 models with the scale / zero point stored in
the file, and runs batch items one at a time (the files have batch 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, ExportError, ImageError
from .base import BaseRunner, TensorMeta

EXTRA = "pip install 'edgesr[tflite]'"


def interpreter(model: bytes | str | os.PathLike, threads: int | None = None):
    """A LiteRT Interpreter (XNNPACK CPU delegate, the interpreter's default) over a file or bytes."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise BackendUnavailable(f"the LiteRT interpreter is not installed ({e.name or e}): {EXTRA}") from None
    try:
        if isinstance(model, (bytes, bytearray)):
            return Interpreter(model_content=bytes(model), num_threads=threads)
        return Interpreter(model_path=str(model), num_threads=threads)
    except (ValueError, RuntimeError) as e:
        what = "model bytes" if isinstance(model, (bytes, bytearray)) else Path(model).name
        raise ExportError(f"LiteRT cannot load {what}: {str(e).splitlines()[0][:200]}") from None


class LiteRtRunner(BaseRunner):
    """Runner (edgesr.backends protocol) over a .tflite (path or bytes)."""

    def __init__(self, model: bytes | str | os.PathLike, name: str | None = None, threads: int | None = None):
        self.source = "bytes" if isinstance(model, (bytes, bytearray)) else Path(model).name
        self.name = name or f"litert:{self.source}"
        self.it = interpreter(model, threads)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        shape = [int(v) for v in self.inp["shape"]]
        if len(shape) != 4:
            raise ExportError(f"{self.source}: expected a 4-D NHWC input, got shape {shape}")
        self.input_hw = (shape[1], shape[2])
        self.channels = shape[3]

    def io(self) -> dict[str, Any]:
        """Input/output names, dtypes, NHWC shapes and (INT8) quantization, for the manifest."""
        def tensor(d):
            scale, zero = d["quantization"]
            t = {"name": d["name"], "dtype": np.dtype(d["dtype"]).name,
                 "shape": [int(v) for v in d["shape"]], "layout": "NHWC"}
            if scale:
                t["quantization"] = {"scale": float(scale), "zero_point": int(zero),
                                     "real_value": "scale * (q - zero_point)"}
            return t
        return {"input": tensor(self.inp), "output": tensor(self.out)}

    def input_metadata(self) -> tuple[TensorMeta, ...]:
        return (_meta(self.inp),)

    def output_metadata(self) -> tuple[TensorMeta, ...]:
        return (_meta(self.out),)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != self.channels or tuple(x.shape[2:]) != self.input_hw:
            h, w = self.input_hw
            raise ImageError(f"{self.source} takes one fixed input size, {h}x{w} LR pixels ({self.channels} channels); "
                             f"got {'x'.join(map(str, x.shape))} (NCHW). LiteRT files are converted per tile size: "
                             f"run tiles of {h}x{w}, or convert with --mobile-size for this size")
        return np.concatenate([self._run1(x[i:i + 1]) for i in range(x.shape[0])], axis=0)

    def _run1(self, x: np.ndarray) -> np.ndarray:
        a = x.transpose(0, 2, 3, 1)
        dt = np.dtype(self.inp["dtype"])
        scale, zero = self.inp["quantization"]
        if dt.kind in "iu":
            info = np.iinfo(dt)
            a = np.clip(np.round(a / scale + zero), info.min, info.max)
        self.it.set_tensor(self.inp["index"], np.ascontiguousarray(a, dtype=dt))
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])
        scale, zero = self.out["quantization"]
        y = (y.astype(np.float32) - zero) * np.float32(scale) if np.dtype(y.dtype).kind in "iu" else y
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2), dtype=np.float32)


def _meta(detail: dict[str, Any]) -> TensorMeta:
    return TensorMeta(detail["name"], tuple(int(v) for v in detail["shape"]), np.dtype(detail["dtype"]).name, "NHWC")
