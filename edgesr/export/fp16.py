"""fp32 ONNX -> fp16 ONNX (weights and activations), refused when a tensor would overflow.

Converter: ``onnxruntime.transformers.float16.convert_float_to_float16`` (ships with
onnxruntime; no extra dependency). Before converting, every intermediate float tensor of
the fp32 model is exposed (on a copy) and its max |value| over the calibration inputs is
recorded. Policy (fp16 max finite value is 65504):

* a tensor with max |value| > ``refuse_ratio`` * 65504 (default 0.5, i.e. 2x headroom,
  because calibration images never cover every input) -> :class:`Fp16Overflow` naming the
  first such tensor in topological order and the node that produces it; so is any
  NaN/Inf in the fp32 run;
* a weight with |value| > 65504 (the converter would silently clamp it) -> Fp16Overflow;
* max |value| > ``warn_ratio`` * 65504 (default 1/8) -> a warning in the result (and
  ``warnings.warn``): still converted, but little headroom.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import ExportError, Fp16Overflow
from ..fsutil import atomic_path, sha256_file
from . import graph as G

FP16_MAX = 65504.0
REFUSE_RATIO = 0.5
WARN_RATIO = 0.125


@dataclass
class TensorRange:
    name: str
    node: str  # producing node name ("" for the graph input)
    op_type: str
    max_abs: float

    @property
    def headroom(self) -> float:
        """65504 / max |value| (inf for an all-zero tensor)."""
        return FP16_MAX / self.max_abs if self.max_abs > 0 else math.inf


@dataclass
class Fp16Result:
    path: Path
    keep_io_fp32: bool
    converter: str
    calibration_inputs: int
    worst: TensorRange  # tensor with the largest max |value| in the fp32 run
    max_abs_vs_fp32: float | None = None
    psnr_vs_fp32: float | None = None
    warnings: list[str] = field(default_factory=list)
    sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["worst"]["headroom"] = self.worst.headroom
        return d


def scan_ranges(model, calibration_inputs: Iterable[np.ndarray], threads: int | None = 1) -> list[TensorRange]:
    """Max |value| of the graph input and every float intermediate/output over the inputs."""
    m = G.load(model)
    types = G.tensor_types(m)
    names = [m.graph.input[0].name, *G.activation_names(m, types)]
    prod = G.producers(m)
    sess = G.session(G.expose(m, names, types), threads)
    maxima = dict.fromkeys(names, 0.0)
    n = 0
    for x in calibration_inputs:
        n += 1
        vals = sess.run(names, G.feed(sess, x))
        for name, v in zip(names, vals):
            v = np.asarray(v)
            a = float(np.max(np.abs(v))) if v.size else 0.0
            if not np.isfinite(a):
                a = math.inf
            maxima[name] = max(maxima[name], a)
    if n == 0:
        raise ExportError("fp16 conversion needs at least one calibration input")
    return [TensorRange(name, prod[name].name if name in prod else "",
                        prod[name].op_type if name in prod else "input", maxima[name]) for name in names]


def export_fp16(onnx_path: str | Path, out_path: str | Path, calibration_inputs: Iterable[np.ndarray],
                keep_io_fp32: bool = True, *, refuse_ratio: float = REFUSE_RATIO, warn_ratio: float = WARN_RATIO,
                check: bool = True) -> Fp16Result:
    """Convert an fp32 ONNX file to fp16 after the overflow scan (see module docstring)."""
    import onnx

    inputs = [np.asarray(x, dtype=np.float32) for x in calibration_inputs]
    model = G.load(onnx_path)
    ranges = scan_ranges(model, inputs)
    limit = refuse_ratio * FP16_MAX
    bad = [r for r in ranges if not r.max_abs <= limit]
    if bad:
        r = bad[0]  # the first in topological order: where the overflow starts
        what = "is not finite" if not math.isfinite(r.max_abs) else f"reaches |{r.max_abs:.4g}|"
        more = f"; {len(bad) - 1} later tensor(s) too" if len(bad) > 1 else ""
        raise Fp16Overflow(f"fp16 overflow: tensor {r.name!r} (output of {r.op_type} node {r.node!r}) {what} "
                           f"on the calibration inputs, over the limit {limit:.0f} = {refuse_ratio:g} x 65504"
                           f"{more}; keep this model in fp32")
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            w = onnx.numpy_helper.to_array(init)
            if w.size and float(np.max(np.abs(w))) > FP16_MAX:
                raise Fp16Overflow(f"fp16 overflow: weight {init.name!r} holds |{float(np.max(np.abs(w))):.4g}| "
                                   f"> 65504; keep this model in fp32")
    worst = max(ranges, key=lambda t: t.max_abs)
    notes = []
    if {p.key: p.value for p in model.metadata_props}.get("fp16_safe") == "false":
        notes.append("the model's Spec marks it fp16-unsafe; the calibration scan found no overflow, "
                     "check the fp16 output quality before shipping it")
        warnings.warn(f"edgesr fp16: {notes[-1]}", stacklevel=2)
    if worst.max_abs > warn_ratio * FP16_MAX:
        notes.append(f"tensor {worst.name!r} ({worst.op_type} {worst.node!r}) reaches |{worst.max_abs:.4g}|, "
                     f"only {worst.headroom:.1f}x below the fp16 limit")
        warnings.warn(f"edgesr fp16: {notes[-1]}", stacklevel=2)

    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            half = convert_float_to_float16(G.load(model), keep_io_types=keep_io_fp32)
        G.toposort(half)  # the converter appends its I/O Cast nodes at the end
        onnx.checker.check_model(half, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"fp16 conversion failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(precision="fp16", fp16_keep_io_fp32="true" if keep_io_fp32 else "false",
                fp16_converter="onnxruntime.transformers.float16",
                fp16_calibration_max_abs=f"{worst.max_abs:.6g}", fp16_worst_tensor=worst.name)
    del half.metadata_props[:]
    for k, v in meta.items():
        half.metadata_props.add(key=k, value=v)

    max_abs = psnr = None
    if check:
        s32, s16 = G.session(model), G.session(half)
        errs, mses = [], []
        for x in inputs:
            a = s32.run(None, G.feed(s32, x))[0].astype(np.float64)
            b = s16.run(None, G.feed(s16, x))[0].astype(np.float64)
            errs.append(float(np.max(np.abs(a - b))))
            mses.append(float(np.mean((a - b) ** 2)))
        max_abs = max(errs)
        psnr = math.inf if max(mses) == 0 else 10 * math.log10(1.0 / max(mses))
        if not math.isfinite(max_abs):
            raise Fp16Overflow("fp16 model produces NaN/Inf on the calibration inputs; keep this model in fp32")

    out_path = Path(out_path)
    try:
        with atomic_path(out_path) as tmp:
            onnx.save_model(half, str(tmp))
    except OSError as e:
        raise ExportError(f"cannot write {out_path}: {e}") from None
    return Fp16Result(path=out_path, keep_io_fp32=keep_io_fp32, converter="onnxruntime.transformers.float16",
                      calibration_inputs=len(inputs), worst=worst, max_abs_vs_fp32=max_abs,
                      psnr_vs_fp32=psnr, warnings=notes, sha256=sha256_file(out_path))
