"""ONNX -> ORT format (.ort, for ONNX Runtime Mobile / minimal builds), fp32, fp16 or INT8 QDQ.

Does what ``python -m onnxruntime.tools.convert_onnx_models_to_ort`` does for one file in
its default "Fixed" optimization style: load the model in an ORT session with the chosen
graph optimization level and ``session.save_model_format=ORT``, with the x86-only
``NchwcTransformer`` disabled so the file runs on ARM too. The result is then loaded and
compared with the .onnx, run in a session with the same optimization settings, on random
inputs (at two sizes when the model has dynamic H/W): the outputs must agree within 1e-6
for fp32, fp16 and INT8 QDQ models alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.ort_session import GRAPH_OPT_LEVELS, ort_session
from ..errors import ExportError
from ..fsutil import atomic_path, sha256_file

ORT_TOL = 1e-6  # max |ort - onnx|, both run with the same optimization level and optimizer filter


@dataclass
class OrtFormatResult:
    path: Path
    source: Path
    optimization: str
    max_abs_vs_onnx: float | None
    checked_shapes: list[tuple[int, ...]]
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["source"] = str(self.path), str(self.source)
        d["checked_shapes"] = [list(s) for s in self.checked_shapes]
        return d


def export_ort(onnx_path: str | Path, out_path: str | Path | None = None, *, optimization: str = "all",
               check: bool = True, tol: float = ORT_TOL, check_sizes=((32, 40), (17, 23))) -> OrtFormatResult:
    """Write the ORT-format version of `onnx_path` (default: same name, .ort suffix)."""

    src = Path(onnx_path)
    if not src.is_file():
        raise ExportError(f"ONNX model not found: {src}")
    if optimization not in GRAPH_OPT_LEVELS:
        raise ExportError(f"unknown optimization level {optimization!r}; use one of {', '.join(GRAPH_OPT_LEVELS)}")
    out = Path(out_path) if out_path is not None else src.with_suffix(".ort")
    if out.suffix.lower() != ".ort":
        raise ExportError(f"{out.name}: an ORT-format model must end in .ort (ONNX Runtime picks the format by suffix)")
    try:
        with atomic_path(out) as tmp:
            tmp_ort = tmp.with_name(tmp.name + ".ort")  # ORT needs the suffix to write the ORT format
            try:
                ort_session(src, graph_opt=optimization, optimized_model_path=tmp_ort, save_ort_format=True,
                            disabled_optimizers=["NchwcTransformer"])
                tmp_ort.replace(tmp)
            finally:
                tmp_ort.unlink(missing_ok=True)
            err, shapes = (_compare(src, tmp, optimization, tol, check_sizes) if check else (None, []))
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - ORT raises its own types
        raise ExportError(f"ORT-format conversion of {src.name} failed: {str(e).splitlines()[0][:300]}") from None
    return OrtFormatResult(path=out, source=src, optimization=optimization, max_abs_vs_onnx=err,
                           checked_shapes=shapes, sha256=sha256_file(out))


def _session(path: Path, optimization: str):
    return ort_session(path, threads=1, graph_opt=optimization, load_ort_format=path.suffix != ".onnx",
                       disabled_optimizers=["NchwcTransformer"])


class _Run:
    def __init__(self, sess):
        self.session = sess
        self.inp = sess.get_inputs()[0]

    def run(self, x):
        dtype = np.float16 if "float16" in self.inp.type else np.float32
        return self.session.run(None, {self.inp.name: x.astype(dtype)})[0].astype(np.float32)


def _compare(onnx_path: Path, ort_path: Path, optimization: str, tol: float,
             sizes) -> tuple[float, list[tuple[int, ...]]]:
    a = _Run(_session(onnx_path, optimization))
    b = _Run(_session(ort_path, optimization))
    shape = a.inp.shape
    dynamic = not all(isinstance(d, int) for d in shape[2:])
    channels = shape[1] if isinstance(shape[1], int) else 3
    shapes: list[tuple[int, ...]] = ([(1, channels, h, w) for h, w in sizes] if dynamic
              else [tuple(d if isinstance(d, int) else 1 for d in shape)])
    worst = 0.0
    for i, shp in enumerate(shapes):
        x = np.random.default_rng(i).random(shp, dtype=np.float32)
        ya, yb = a.run(x), b.run(x)
        if ya.shape != yb.shape:
            raise ExportError(f"ORT-format model output shape {yb.shape} != ONNX {ya.shape}")
        worst = max(worst, float(np.max(np.abs(ya.astype(np.float64) - yb))))
    if not worst <= tol:
        raise ExportError(f"ORT-format model differs from {onnx_path.name} by {worst:.3g} (> {tol:g})")
    return worst, shapes
