"""ncnn runner (the ``ncnn`` Python package, CPU) for .param/.bin pairs written by edgesr.

Takes the edgesr convention (NCHW float32 batch); ncnn runs one CHW image at a time. Python
ncnn's ``Mat(numpy_array)`` wraps the array's memory without owning it (and without a reference
count), so the input is handed to ncnn as an owned clone: freeing a wrapped array early feeds
garbage, and an in-place first layer dereferences the missing reference count (segfault).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BackendUnavailable, ExportError
from .base import BaseRunner, TensorMeta

EXTRA = "pip install 'edgesr[ncnn]'"


def _ncnn():
    try:
        import ncnn
    except ImportError as e:
        raise BackendUnavailable(f"the ncnn runtime is not installed ({e.name or e}): {EXTRA}") from None
    return ncnn


class NcnnRunner(BaseRunner):
    """Runner over an ncnn model: a .param path (its .bin beside it) or (param text, bin bytes)."""

    def __init__(self, param: str | os.PathLike, weights: bytes | None = None, *, name: str | None = None,
                 fp16: bool = False, threads: int | None = None):
        from ..export.ncnn_format import input_shape, io_names

        ncnn = _ncnn()
        if weights is None:
            path = Path(param)
            bin_path = path.with_suffix(".bin")
            if not path.is_file() or not bin_path.is_file():
                raise ExportError(f"ncnn model needs {path.name} and {bin_path.name} side by side")
            text, weights = path.read_text(), bin_path.read_bytes()
            self.source = path.name
        else:
            text, self.source = str(param), "memory"
        self.name = name or f"ncnn:{self.source}"
        self.param_text = text
        self.inputs, self.outputs = io_names(text)
        self.input_hw = input_shape(text)  # fixed-size model (declared by its Input layer), or None
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ExportError(f"{self.source}: expected one input and one output blob, found "
                              f"{self.inputs} -> {self.outputs}")
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        for opt in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic"):
            setattr(self.net.opt, opt, bool(fp16))
        if threads:
            self.net.opt.num_threads = int(threads)
        # ncnn's Python load_*_mem return nothing checkable: load from files, whose return codes are
        import tempfile

        with tempfile.TemporaryDirectory(prefix="edgesr-ncnn-") as tmp:
            p, b = Path(tmp) / "model.param", Path(tmp) / "model.bin"
            p.write_text(text)
            b.write_bytes(weights)
            if self.net.load_param(str(p)) != 0:
                raise ExportError(f"ncnn cannot parse {self.source} (.param)")
            if self.net.load_model(str(b)) != 0:
                raise ExportError(f"ncnn cannot load the weights of {self.source} (.bin does not match the .param)")

    def io(self) -> dict[str, Any]:
        shape = ["C", "H", "W"] if self.input_hw is None else ["C", *self.input_hw]
        return {"input": {"name": self.inputs[0], "dtype": "float32", "layout": "CHW", "shape": shape},
                "output": {"name": self.outputs[0], "dtype": "float32", "layout": "CHW",
                           "shape": ["C", "H*scale", "W*scale"]}}

    def input_metadata(self) -> tuple[TensorMeta, ...]:
        hw = self.input_hw if self.input_hw is not None else (None, None)
        return (TensorMeta(self.inputs[0], (1, None, *hw)),)

    def output_metadata(self) -> tuple[TensorMeta, ...]:
        return (TensorMeta(self.outputs[0], (1, None, None, None)),)

    def blobs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named intermediate blobs for one NCHW (N=1) input (for calibration)."""
        ncnn = _ncnn()
        a = np.ascontiguousarray(x[0], dtype=np.float32)  # referenced until the extractions are done
        ex = self.net.create_extractor()
        if len(names) > 1:  # light mode frees intermediate blobs once consumed; keep them to read several
            ex.set_light_mode(False)
        # an owned copy: a Mat wrapping numpy memory has no reference count, and ncnn dereferences
        # it when an in-place layer (BinaryOp, ReLU, ...) reads the input blob directly (segfault)
        ex.input(self.inputs[0], ncnn.Mat(a).clone())
        out = {}
        for n in names:
            rc, m = ex.extract(n)
            if rc != 0 or m.empty():
                raise ExportError(f"ncnn: cannot extract blob {n!r} from {self.source}")
            out[n] = np.array(m, dtype=np.float32)
        del a
        return out

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.input_hw is not None and tuple(x.shape[2:]) != self.input_hw:
            from ..errors import ImageError

            h, w = self.input_hw
            raise ImageError(f"{self.source} takes one fixed input size, {h}x{w} LR pixels; got "
                             f"{'x'.join(map(str, x.shape))} (NCHW). Run tiles of {h}x{w}, or convert for this size")
        ys = []
        for i in range(x.shape[0]):
            ys.append(self.blobs(x[i:i + 1], self.outputs)[self.outputs[0]][None])
        return np.concatenate(ys, axis=0)
