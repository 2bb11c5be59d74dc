"""Deploy form -> LiteRT (TensorFlow Lite) ``.tflite``, fp32 or full-integer INT8.

Conversion uses litert-torch (the maintained PyTorch -> LiteRT converter; ``torch.export`` ->
StableHLO -> TFLite flatbuffer). The model is wrapped so the file's input and output are
NHWC (what Android bitmaps and the GPU delegate use); litert-torch's layout pass removes the
transposes inside.

**Fixed input size.** litert-torch 0.10 cannot lower PixelShuffle's reshapes with symbolic
H/W (measured: ``torch.export`` with dynamic H/W fails in its JAX lowering of ``aten.view``),
so each .tflite is converted for one LR input size, by default one recommended tile box
(tile + 2 x overlap, see :func:`edgesr.bundle.recommended_tiling`). Apps feed tiles of that
size; :class:`edgesr.backends.litert_runner.LiteRtRunner` refuses other sizes with one line.

**INT8** is full-integer (int8 weights per channel, int8 activations per tensor, int8 input
and output tensors with their scale/zero point in the file) from ai-edge-quantizer's static
``a8w8`` recipe with min-max ranges, calibrated on edgesr's calibration source
(:func:`edgesr.export.mobile.calibration_inputs`).

Every export is run with the LiteRT interpreter on this CPU before it is written: fp32 must
match PyTorch within :data:`edgesr.export.mobile.FP32_TOL` on real photo crops; INT8 reports
its PSNR vs PyTorch and is refused below :data:`edgesr.export.mobile.INT8_MIN_PSNR`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BackendUnavailable, ExportError, QuantizationError
from ..fsutil import atomic_path
from ..spec import Spec
from .mobile import MobileExport, calibration_inputs, channel_repeat_as_concat, compare_with_torch, judge, \
    fixed_shape_form, package_version, photo_crops, quiet_native

EXTRA = "pip install 'edgesr[tflite]'"

# Ops the LiteRT GPU delegate is documented to run (float). Anything else in a model is listed
# by static_check as "verify on a device": the delegate hands unsupported ops back to the CPU.
GPU_DELEGATE_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DIV",
    "FULLY_CONNECTED", "HARD_SWISH", "LOGISTIC", "MAX_POOL_2D", "MAXIMUM", "MEAN", "MINIMUM", "MUL", "PAD",
    "PADV2", "PRELU", "RELU", "RELU6", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT",
    "SLICE", "SOFTMAX", "SPLIT", "SQRT", "SQUARE", "STRIDED_SLICE", "SUB", "TANH", "TRANSPOSE",
    "TRANSPOSE_CONV", "QUANTIZE", "DEQUANTIZE"})
GPU_MAX_RANK = 4


def _require() -> None:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"LiteRT export needs litert-torch and ai-edge-litert ({e.name or e}): {EXTRA}") \
            from None


def versions() -> dict[str, str | None]:
    return {"litert_torch": package_version("litert-torch"), "ai_edge_litert": package_version("ai-edge-litert"),
            "ai_edge_quantizer": package_version("ai-edge-quantizer")}


def default_hw(spec: Spec) -> tuple[int, int]:
    """One recommended tile box (tile + 2 x overlap), the size an app feeds."""
    from ..bundle import recommended_tiling

    tile, overlap = recommended_tiling(spec)
    return tile + 2 * overlap, tile + 2 * overlap


def _nhwc(module):
    """`module` (NCHW) wrapped so the exported program takes and returns NHWC."""
    import torch

    class NHWC(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    return NHWC(module).eval()


def convert_fp32_bytes(module, spec: Spec, hw: Sequence[int]) -> bytes:
    """The fp32 .tflite (NHWC I/O, input 1 x H x W x C) of `module` as bytes."""
    import torch

    _require()
    import litert_torch

    h, w = int(hw[0]), int(hw[1])
    if h < spec.min_size or w < spec.min_size or h % spec.size_multiple or w % spec.size_multiple:
        raise ExportError(f"LiteRT input {h}x{w} does not fit the model (min {spec.min_size}, "
                          f"multiple of {spec.size_multiple})")
    sample = torch.rand(1, h, w, spec.in_channels, generator=torch.Generator().manual_seed(0))
    try:
        with quiet_native(), channel_repeat_as_concat(), torch.no_grad():
            edge = litert_torch.convert(_nhwc(fixed_shape_form(module.float().cpu())), (sample,))
        with tempfile.TemporaryDirectory(prefix="edgesr-litert-") as tmp:
            path = Path(tmp) / "model.tflite"
            with quiet_native():
                edge.export(str(path))
            return path.read_bytes()
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.export / the converter raise many types
        raise ExportError(f"LiteRT conversion failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None


def calibration_ranges(fp32: bytes, calibration: Sequence[np.ndarray],
                       input_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """ai-edge-quantizer calibration result ({tensor: {"min", "max"}}) with the true minimum and
    maximum over `calibration` (NCHW inputs).

    The quantizer's own ``calibrate`` keeps an exponential moving average of per-sample
    min/max (smoothing 0.95), which clips: on ETDS-T it mapped the [0, 1] input to
    [0.044, 0.957] and the clamped [0, 1] output to [0.033, 0.970], costing bright and dark
    pictures up to 2 dB. `input_range` (the model's value range) is added to the input's range,
    so the int8 input covers every legal value (scale 1/255 for [0, 1]: 8-bit pictures exactly)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    it = Interpreter(model_content=fp32)
    sigs = it.get_signature_list()
    if len(sigs) != 1:
        raise QuantizationError(f"expected one signature in the LiteRT model, found {list(sigs)}")
    sig = next(iter(sigs))
    name = sigs[sig]["inputs"][0]
    data = [{name: np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)} for x in calibration]
    rm = recipe_manager.RecipeManager()
    rm.load_quantization_recipe(recipe.static_wi8_ai8())
    with quiet_native():
        cal = calibrator.Calibrator(fp32, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
        cal.calibrate({sig: data}, rm)
    qsvs = cal.get_model_qsvs()
    if input_range is not None:
        tensor = it.get_input_details()[0]["name"]
        q = qsvs.get(tensor)
        if q:
            q["min"] = np.minimum(q["min"], np.float32(input_range[0]))
            q["max"] = np.maximum(q["max"], np.float32(input_range[1]))
    return qsvs


def quantize_int8_bytes(fp32: bytes, calibration: Sequence[np.ndarray],
                        input_range: tuple[float, float] | None = None) -> bytes:
    """Full-integer INT8 (.tflite bytes) from fp32 .tflite bytes, calibrated on NCHW inputs
    (true min-max ranges, :func:`calibration_ranges`)."""
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as e:
        raise BackendUnavailable(f"LiteRT INT8 needs ai-edge-quantizer ({e.name or e}): {EXTRA}") from None
    try:
        ranges = calibration_ranges(fp32, calibration, input_range)
        with quiet_native():
            qt = quantizer.Quantizer(bytearray(fp32))
            qt.load_quantization_recipe(recipe.static_wi8_ai8())
            result = qt.quantize(ranges)
    except QuantizationError:
        raise
    except Exception as e:  # noqa: BLE001 - the quantizer raises many types
        raise QuantizationError(f"LiteRT INT8 quantization failed: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:300]}") from None
    return bytes(result.quantized_model)


def export_tflite(module, spec: Spec, path: str | Path, *, precision: str = "fp32",
                  hw: Sequence[int] | None = None, calib: str | Path | None = None,
                  fp32_bytes: bytes | None = None, check: bool = True) -> MobileExport:
    """Convert `module` (deploy form) to a .tflite at `path`; see the module docstring.

    hw: the fixed LR input (H, W) (default: one recommended tile box).
    calib: calibration images (folder) for INT8 (default: the bundled sample photos).
    fp32_bytes: an fp32 conversion of the same module at `hw`, reused for INT8.
    """
    from ..backends.litert_runner import LiteRtRunner

    _require()
    if precision not in ("fp32", "int8"):
        raise ExportError(f"LiteRT precision must be fp32 or int8, got {precision!r}")
    t0 = time.perf_counter()
    path = Path(path)
    hw = tuple(int(v) for v in (hw or default_hw(spec)))
    data = fp32_bytes if fp32_bytes is not None else convert_fp32_bytes(module, spec, hw)
    details: dict[str, Any] = {"converter": "litert-torch", "io_layout": "NHWC"}
    if precision == "int8":
        cal = calibration_inputs(spec, hw, calib)
        details |= {"quantizer": "ai-edge-quantizer static_wi8_ai8 (min-max)", "calibration_inputs": len(cal),
                    "calibration": "edgesr.quant.calibration.CalibrationSource patches, mirrored to the input size"}
        data = quantize_int8_bytes(data, cal)
    runner = LiteRtRunner(data, name=f"litert:{precision}")
    result = MobileExport(files=[path], format="tflite", precision=precision, backend="litert", input_hw=hw,
                          layout="NHWC", io=runner.io(), static_check=static_check(data), details=details,
                          versions=versions())
    if check:
        result.max_abs_vs_torch, result.psnr_vs_torch, result.checked_shapes = compare_with_torch(
            module, runner, photo_crops(spec, hw, n=2))
        judge(result, "LiteRT")
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e}") from None
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def static_check(model: bytes | str | os.PathLike) -> dict[str, Any]:
    """Ops and tensor ranks of a .tflite, and what would keep it off the GPU delegate:
    tensors of rank > 4 and ops outside :data:`GPU_DELEGATE_OPS`."""
    from ..backends.litert_runner import interpreter

    it = interpreter(model)
    ops = Counter(o["op_name"] for o in it._get_ops_details())  # noqa: SLF001 - the only op listing API
    ranks = [len(t["shape_signature"]) for t in it.get_tensor_details()]
    off = sorted(op for op in ops if op not in GPU_DELEGATE_OPS)
    return {"ops": dict(sorted(ops.items())), "max_tensor_rank": max(ranks, default=0),
            "gpu_delegate": {"rank_ok": max(ranks, default=0) <= GPU_MAX_RANK, "ops_outside_list": off,
                             "note": "static check against edgesr's list of GPU-delegate ops; verify on a device"}}
