"""Deploy form -> ncnn ``.param`` + ``.bin`` via pnnx, in fp32, fp16 storage or INT8.

- **fp32**: ``pnnx.export(..., fp16=False)``. pnnx's default (fp16=True) stores the weights as
  fp16, which is the fp16 artifact, not fp32: edgesr asks for each explicitly.
- **fp16**: fp16 weights in the .bin; apps enable ``opt.use_fp16_storage`` (and on ARM
  ``use_fp16_arithmetic``). Judged by PSNR vs PyTorch fp32.
- **INT8**: ncnn's own INT8 scheme (``ncnn2table`` + ``ncnn2int8``; neither tool ships in the
  ncnn wheel or in Debian 12, so edgesr does what they do, in Python): int8 weights per output
  channel and one symmetric input scale per convolution, written as ``int8_scale_term``
  convolutions; ncnn quantizes each convolution's input on the fly and dequantizes its output,
  everything else stays float. Before that the PyTorch module is prepared
  (:mod:`edgesr.export.mobile_int8`) and the conv inputs are zero-centred; see
  :mod:`edgesr.export.ncnn_int8`.

Shapes are dynamic: pnnx traces at two sizes and ncnn layers are shape-agnostic, so any H/W runs
- when the result matches PyTorch at other sizes (:func:`shape_mode` checks). Models whose
converted graph freezes a size (SAFMN's adaptive pooling) are converted for one input size
instead, which the Input layer declares and the runner enforces. The exported pair is checked
with the ``ncnn`` Python runtime before it is written.

Python ncnn keeps a pointer, not a copy, of the numpy array an ``ncnn.Mat`` wraps: freeing the
array before ``extract`` returns feeds garbage (black or noisy frames). The runner hands ncnn an
owned clone (see :mod:`edgesr.backends.ncnn_runner`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import ExportError
from ..fsutil import atomic_path
from ..spec import Spec
from .mobile import FP32_TOL, MobileExport, compare_with_torch, judge, package_version, photo_crops
from .ncnn_convert import EXTRA, TRACE_SIZES, _fit, _require, convert_bytes  # noqa: F401
from .ncnn_format import (  # noqa: F401
    TAG_FP16,
    TAG_FP32,
    TAG_INT8,
    Layer,
    _align4,
    _layer_types,
    _read_weights,
    declare_input_shape,
    input_shape,
    io_names,
    parse_param,
    walk_bin,
)

PRECISIONS = ("fp32", "fp16", "int8")
CHECK_SIZES = ((64, 64), (37, 53))


def versions() -> dict[str, str | None]:
    return {"pnnx": package_version("pnnx"), "ncnn": package_version("ncnn")}


def export_ncnn(module, spec: Spec, param_path: str | Path, *, precision: str = "fp32",
                calib: str | Path | None = None, psnr_budget: float | None = 0.1,
                check: bool = True, options=None, hw: Sequence[int] | None = None,
                shape_note: str = "") -> MobileExport:
    """Write `param_path` (.param) and its .bin beside it; see the module docstring.

    psnr_budget: INT8 only: the Y-PSNR drop (dB) vs fp32 allowed on the held-out sample photos;
    the most sensitive convolutions stay float until it holds (None: all convolutions INT8, no verdict).
    options: INT8 steps (:class:`edgesr.export.mobile_int8.Int8Options`; default all on).
    hw: None for a dynamic-shape model, or one fixed input size (see :func:`shape_mode`, which
    decides; `shape_note` says why it was fixed)."""
    from ..backends.ncnn_runner import NcnnRunner

    _require()
    if precision not in PRECISIONS:
        raise ExportError(f"ncnn precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    t0 = time.perf_counter()
    param_path = Path(param_path)
    if param_path.suffix != ".param":
        raise ExportError(f"{param_path.name}: an ncnn model is a .param file (its weights go to .bin beside it)")
    bin_path = param_path.with_suffix(".bin")
    hw = None if hw is None else (int(hw[0]), int(hw[1]))
    details: dict[str, Any] = {"converter": "pnnx", "shapes": "dynamic" if hw is None else f"fixed {hw[0]}x{hw[1]}"}
    if shape_note:
        details["shape_note"] = shape_note
    if precision == "int8":
        from .ncnn_int8 import int8_ncnn

        param, weights, info = int8_ncnn(module, spec, calib=calib, psnr_budget=psnr_budget, options=options, hw=hw)
        details |= info
    else:
        param, weights = convert_bytes(module, spec, fp16=precision == "fp16", hw=hw)
    details["layers"] = _layer_types(param)
    runner = NcnnRunner(param, weights, name=f"ncnn:{precision}", fp16=precision == "fp16")
    result = MobileExport(files=[param_path, bin_path], format="ncnn", precision=precision, backend="ncnn",
                          input_hw=hw, layout="CHW", io=runner.io(), details=details, versions=versions(),
                          static_check={"layers": details["layers"]})
    if check:
        inputs = ([x for s in CHECK_SIZES for x in photo_crops(spec, _fit(s, spec), n=1, offset=len(s))]
                  if hw is None else photo_crops(spec, hw, n=2))
        result.max_abs_vs_torch, result.psnr_vs_torch, result.checked_shapes = compare_with_torch(
            module, runner, inputs)
        judge(result, "ncnn")
    try:
        with atomic_path(bin_path) as tmp:
            tmp.write_bytes(weights)
        with atomic_path(param_path) as tmp:
            tmp.write_text(param)
    except OSError as e:
        raise ExportError(f"cannot write {param_path}: {e}") from None
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def shape_mode(module, spec: Spec, fixed_hw: Sequence[int]) -> tuple[tuple[int, int] | None, str]:
    """(None, "") when pnnx converts `module` with dynamic shapes that match PyTorch within
    FP32_TOL at two check sizes; else (fixed_hw, why) - the model is then converted at one size."""
    from ..backends.ncnn_runner import NcnnRunner

    try:
        runner = NcnnRunner(*convert_bytes(module, spec), name="ncnn:dynamic-check")
        inputs = [x for s in CHECK_SIZES for x in photo_crops(spec, _fit(s, spec), n=1)]
        worst = compare_with_torch(module, runner, inputs)[0]
        if worst <= FP32_TOL:
            return None, ""
        why = f"the dynamic-shape conversion differs from PyTorch by {worst:.2g} at other sizes"
    except ExportError as e:
        why = f"no dynamic-shape conversion ({e})"
    hw = (int(fixed_hw[0]), int(fixed_hw[1]))
    return hw, f"{why}; converted for one input size, {hw[0]}x{hw[1]}"
