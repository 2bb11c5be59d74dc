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
``a8w8`` recipe, applied to a *prepared* module (:mod:`edgesr.export.mobile_int8`: exact
activation equalization, GPTQ weights on the int8 grid, bias correction) with true min-max
activation ranges over edgesr's calibration source and the input range widened to the model's
value range (:func:`calibration_ranges`). The verdict is edgesr's: the Y-PSNR drop on the
held-out sample photos; above ``psnr_budget`` the costliest convolutions stay float until it holds.
When no such choice holds the budget (attention models: SAFMN++ loses ~1 dB with every
convolution float, the loss is in the int8 tensors between them), the next schemes are tried,
fastest on a CPU first: ``dynamic`` (int8 weights; activations are
float in the file and quantized to int8 per tensor at run time by the CPU kernels, so the file is
not an integer file: precision ``int8-dynamic``, float input and output; SAFMN++: 0.6x the fp32
file's time), then LiteRT's 16x8 mode (``a16w8``: int8 weights, int16 activations per tensor,
symmetric; int16 input and output tensors), an integer file for accelerators that LiteRT's CPU
runs on reference kernels (27x the fp32 time). The file records which scheme it is
(:data:`SCHEMES`; precision ``int8-dynamic`` / ``int16x8`` in the manifest).

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
from typing import Any, NamedTuple, Sequence

import numpy as np

from ..errors import BackendUnavailable, ExportError, QuantizationError
from ..fsutil import atomic_path
from ..spec import Spec
from .mobile import (
    MobileExport,
    calibration_inputs,
    compare_with_torch,
    converter_rewrites,
    fixed_shape_form,
    judge,
    package_version,
    photo_crops,
    quiet_native,
)
from .mobile_int8 import Int8Options, float_layer_search, prepare_int8

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

# LiteRT schemes the INT8 verdict tries, in order (fastest on a CPU first, measured on SAFMN++:
# a8w8 0.38x, dynamic 0.59x, a16w8 27x the fp32 file's time): (name, activation bits, manifest precision)
class Scheme(NamedTuple):
    """One LiteRT quantization scheme the INT8 verdict can write."""

    name: str
    activation_bits: int
    precision: str  # the manifest's precision label and the file name's suffix
    activations: str  # what the file's activations are, in words
    integer: bool  # integer activations (and integer input/output tensors) in the file
    text: str


SCHEMES = {s.name: s for s in (
    Scheme("a8w8", 8, "int8", "int8", True,
           "int8 weights per output channel, int8 activations per tensor (asymmetric), int8 input/output"),
    Scheme("dynamic", 8, "int8-dynamic", "int8 at run time (float in the file)", False,
           "int8 weights per output channel; activations float in the file, quantized to int8 per tensor at run "
           "time by the CPU kernels (XNNPACK); float input/output: not an integer file"),
    Scheme("a16w8", 16, "int16x8", "int16", True,
           "int8 weights per output channel, int16 activations per tensor (symmetric), int16 input/output "
           "(LiteRT 16x8 mode)"))}
SCHEME_NAMES = tuple(SCHEMES)  # the order the verdict tries them by default
INTEGER_SCHEMES = tuple(n for n, sc in SCHEMES.items() if sc.integer)  # convert --tflite-integer


def scheme_of(activation_bits: int) -> str:
    """The integer scheme with `activation_bits`-bit activations."""
    if activation_bits not in (8, 16):
        raise QuantizationError(f"LiteRT activations must be 8 or 16 bits, got {activation_bits}")
    return "a8w8" if activation_bits == 8 else "a16w8"


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
        with quiet_native(), converter_rewrites(fixed_size=True), torch.no_grad():
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


def calibration_ranges(fp32: bytes, calibration: Sequence[np.ndarray], input_range: tuple[float, float] | None = None,
                       method: str = "minmax") -> dict[str, Any]:
    """ai-edge-quantizer calibration result ({tensor: {"min", "max"}}) over `calibration` (NCHW).

    method "minmax": the true minimum and maximum. The quantizer's own ``calibrate``
    ("moving-average") keeps an exponential moving average of per-sample min/max (smoothing
    0.95), which clips: on ETDS-T it mapped the [0, 1] input to [0.044, 0.957] and the clamped
    [0, 1] output to [0.033, 0.970]. `input_range` (the model's value range) is added to the
    input's range, so the int8 input covers every legal value (scale 1/255 for [0, 1]: 8-bit
    pictures are represented exactly)."""
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
    update = qsv_utils.min_max_update if method == "minmax" else qsv_utils.moving_average_update
    with quiet_native():
        cal = calibrator.Calibrator(fp32, num_threads=1, qsv_update_func=update)
        cal.calibrate({sig: data}, rm)
    qsvs = cal.get_model_qsvs()
    if input_range is not None:
        q = qsvs.get(it.get_input_details()[0]["name"])
        if q:
            q["min"] = np.minimum(q["min"], np.float32(input_range[0]))
            q["max"] = np.maximum(q["max"], np.float32(input_range[1]))
    return qsvs


def conv_ops(fp32: bytes) -> list[str]:
    """Output tensor names of the convolutions of a .tflite, graph order (the names the
    quantizer's recipe scopes match; used to keep layers float)."""
    from ..backends.litert_runner import interpreter

    it = interpreter(fp32)
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    return [names[o["outputs"][0]] for o in it._get_ops_details()  # noqa: SLF001 - the only op listing API
            if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")]


def quantize_int8_bytes(fp32: bytes, calibration: Sequence[np.ndarray] | dict[str, Any],
                        input_range: tuple[float, float] | None = None, *, ranges: str = "minmax",
                        float_ops: Sequence[str] = (), activation_bits: int = 8, scheme: str | None = None) -> bytes:
    """Quantized .tflite bytes from fp32 .tflite bytes: ai-edge-quantizer's static a8w8 recipe
    (int8 weights per output channel, int8 activations per tensor), or a16w8 with
    `activation_bits` 16 (int16 activations), with the ranges of :func:`calibration_ranges` (or a
    precomputed calibration result); `scheme` "dynamic": the dynamic recipe (int8 weights,
    activations quantized at run time; no calibration). `float_ops`: output tensor names (see
    :func:`conv_ops`) of ops kept float (mixed precision)."""
    try:
        import re

        from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe
    except ImportError as e:
        raise BackendUnavailable(f"LiteRT INT8 needs ai-edge-quantizer ({e.name or e}): {EXTRA}") from None
    scheme = scheme or scheme_of(activation_bits)
    if scheme not in SCHEMES:
        raise QuantizationError(f"unknown LiteRT scheme {scheme!r}; choose from {list(SCHEMES)}")
    try:
        qsvs = None
        if scheme != "dynamic":
            qsvs = calibration if isinstance(calibration, dict) else calibration_ranges(fp32, calibration,
                                                                                        input_range, ranges)
        with quiet_native():
            qt = quantizer.Quantizer(bytearray(fp32))
            qt.load_quantization_recipe({"a8w8": recipe.static_wi8_ai8, "a16w8": recipe.static_wi8_ai16,
                                         "dynamic": recipe.dynamic_wi8_afp32}[scheme]())
            for name in float_ops:
                qt.update_quantization_recipe(f"^{re.escape(name)};?$", qtyping.TFLOperationName.ALL_SUPPORTED,
                                              algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
            result = qt.quantize(qsvs)
    except QuantizationError:
        raise
    except Exception as e:  # noqa: BLE001 - the quantizer raises many types
        raise QuantizationError(f"LiteRT INT8 quantization failed: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:300]}") from None
    return bytes(result.quantized_model)


class LiteRtInt8:
    """The INT8 recipe of one module: prepared once (:func:`edgesr.export.mobile_int8.prepare_int8`
    on the calibration patches), then built at any fixed size; :meth:`verdict` scores it.

    The verdict is edgesr's (:mod:`edgesr.quant`): the Y-PSNR drop vs fp32 on the held-out sample
    photos (never calibration, never a test set). A .tflite is fixed-size, so the recipe (same
    prepared weights, calibration patches mirrored to that size) is converted once per held-out
    image size; each candidate set of float layers is then only re-quantized."""

    def __init__(self, module, spec: Spec, calib: str | Path | None = None, options: Int8Options | None = None):
        self.module, self.spec, self.calib = module, spec, calib
        self.options = options or Int8Options()
        self.prepared, self.prep = prepare_int8(module, calibration_inputs(spec, None, calib), self.options,
                                                symmetric=False, split_prelus=True)
        self._fp32: dict[tuple[int, int], bytes] = {}
        self._ranges: dict[tuple[int, int], dict[str, Any]] = {}

    @property
    def input_range(self) -> tuple[float, float] | None:
        return self.spec.value_range if self.options.full_input_range else None

    def fp32(self, hw: Sequence[int]) -> bytes:
        """The prepared module converted at `hw` (fp32; the quantizer's input)."""
        key = (int(hw[0]), int(hw[1]))
        if key not in self._fp32:
            self._fp32[key] = convert_fp32_bytes(self.prepared, self.spec, key)
        return self._fp32[key]

    def ranges(self, hw: Sequence[int]) -> dict[str, Any]:
        key = (int(hw[0]), int(hw[1]))
        if key not in self._ranges:
            self._ranges[key] = calibration_ranges(self.fp32(key), calibration_inputs(self.spec, key, self.calib),
                                                   self.input_range, self.options.ranges)
        return self._ranges[key]

    def build(self, hw: Sequence[int], float_ops: Sequence[str] = (), activation_bits: int = 8,
              scheme: str | None = None) -> bytes:
        """Quantized .tflite bytes at `hw` (`float_ops`: convolutions kept float; `activation_bits`
        8: a8w8, 16: a16w8; `scheme`, when given, one of :data:`SCHEMES` instead)."""
        scheme = scheme or scheme_of(activation_bits)
        return quantize_int8_bytes(self.fp32(hw), {} if scheme == "dynamic" else self.ranges(hw),
                                   float_ops=float_ops, scheme=scheme)

    def details(self) -> dict[str, Any]:
        return {"quantizer": "ai-edge-quantizer static_wi8_ai8 (" + SCHEMES["a8w8"].text + "); when no a8w8 choice "
                             "holds the budget, dynamic_wi8_afp32 (" + SCHEMES["dynamic"].text + "), then "
                             "static_wi8_ai16 (" + SCHEMES["a16w8"].text + ")",
                "ranges": f"{self.options.ranges} over the calibration inputs"
                          + (f", input range widened to {list(self.spec.value_range)}" if self.input_range else ""),
                "calibration": "edgesr.quant.calibration.CalibrationSource patches, mirrored to the input size",
                "options": self.options.to_dict(), "preparation": self.prep.to_dict()}

    def verdict(self, psnr_budget: float | None, schemes: Sequence[str] = SCHEME_NAMES
                ) -> tuple[list[str], dict[str, Any]]:
        """(float ops, verdict record): per scheme of `schemes` (:data:`SCHEMES`, in that order), the
        held-out drop with every convolution quantized and, above `psnr_budget` dB, the costliest
        convolutions kept float until it holds (:func:`float_layer_search`); the first scheme that
        holds the budget is chosen, else the one with the smallest drop. The record's
        ``scheme`` / ``precision`` say which scheme to :meth:`build`, ``integer`` whether its
        activations are integer in the file; ``schemes`` lists each scheme tried with its drops."""
        from ..quant.calibration import held_out_eval_set

        unknown = [s for s in schemes if s not in SCHEMES]
        if unknown or not schemes:
            raise QuantizationError(f"unknown LiteRT scheme(s) {unknown or list(schemes)}; choose from {list(SCHEMES)}")
        pairs = held_out_eval_set(self.spec.scale).pairs
        sizes = [p.lr.shape[:2] for p in pairs]
        psnr_fp32 = float(np.mean([self._psnr(convert_fp32_bytes(self.module, self.spec, hw), p)
                                   for hw, p in zip(sizes, pairs)]))
        memo: dict[tuple[str, tuple[str, ...]], float] = {}
        tried: list[dict[str, Any]] = []
        for scheme in schemes:

            def drop_of(float_ops: Sequence[str], scheme: str = scheme) -> float:
                key = (scheme, tuple(sorted(float_ops)))
                if key not in memo:
                    memo[key] = psnr_fp32 - float(np.mean([self._psnr(self.build(hw, float_ops, scheme=scheme), p)
                                                           for hw, p in zip(sizes, pairs)]))
                return memo[key]

            float_ops, drop, steps = float_layer_search(conv_ops(self.fp32(sizes[0])), drop_of, psnr_budget)
            tried.append({"scheme": scheme, "activation_bits": SCHEMES[scheme].activation_bits,
                          "integer": SCHEMES[scheme].integer,
                          "drop_all_quantized": steps[0]["drop"],
                          "drop": round(drop, 4), "float_layers": float_ops, "search": steps,
                          "within_budget": psnr_budget is None or drop <= psnr_budget})
            if tried[-1]["within_budget"]:
                break
        chosen = next((t for t in tried if t["within_budget"]), min(tried, key=lambda t: t["drop"]))
        precision = SCHEMES[chosen["scheme"]].precision
        return chosen["float_layers"], {
            "eval_set": "sample-held-out (" + ", ".join(p.name for p in pairs) + ")",
            "psnr_fp32": round(psnr_fp32, 4), "scheme": chosen["scheme"], "activation_bits": chosen["activation_bits"],
            "activations": SCHEMES[chosen["scheme"]].activations, "integer": chosen["integer"], "precision": precision,
            "drop_all_int8": tried[0]["drop_all_quantized"], "drop_all_quantized": chosen["drop_all_quantized"],
            "drop": chosen["drop"], "psnr_budget": psnr_budget, "within_budget": chosen["within_budget"],
            "float_layers": chosen["float_layers"], "search": chosen["search"],
            "schemes": tried,  # each with its own search steps (a8w8's floor check says why it was left)
            "how": "one conversion per held-out image size (the .tflite is fixed-size)"}

    def _psnr(self, model: bytes, p) -> float:
        from ..backends.litert_runner import LiteRtRunner
        from ..metrics import psnr_y
        from ..quant.calibration import from_model_output, to_model_input

        y = LiteRtRunner(model, name="litert:eval").run(to_model_input(p.lr, self.spec)[None])
        return psnr_y(np.clip(from_model_output(y[0], self.spec), 0, 1), p.hr, self.spec.scale)


def int8_tflite_bytes(module, spec: Spec, hw: Sequence[int], *, calib: str | Path | None = None,
                      options: Int8Options | None = None, psnr_budget: float | None = 0.1,
                      schemes: Sequence[str] = SCHEME_NAMES) -> tuple[bytes, dict[str, Any]]:
    """(quantized .tflite bytes at `hw`, details) through :class:`LiteRtInt8`, with the held-out
    verdict, mixed precision and the dynamic / a16w8 fallbacks when `psnr_budget` is not None
    (else the first of `schemes`). `schemes`: the schemes the verdict may write, in the order tried
    (:data:`INTEGER_SCHEMES` for integer files only). details["scheme"]: the scheme written."""
    recipe = LiteRtInt8(module, spec, calib, options)
    details = recipe.details()
    float_ops: list[str] = []
    name = schemes[0]
    if psnr_budget is not None:
        float_ops, details["verdict"] = recipe.verdict(psnr_budget, schemes)
        name = details["verdict"]["scheme"]
    sc = SCHEMES[name]
    details["scheme"] = {"name": name, "precision": sc.precision, "weights": "int8", "activations": sc.activations,
                         "integer": sc.integer, "float_ops": float_ops, "text": sc.text}
    return recipe.build(hw, float_ops, scheme=name), details


def export_tflite(module, spec: Spec, path: str | Path, *, precision: str = "fp32",
                  hw: Sequence[int] | None = None, calib: str | Path | None = None,
                  fp32_bytes: bytes | None = None, check: bool = True, psnr_budget: float | None = 0.1,
                  options: Int8Options | None = None,
                  schemes: Sequence[str] = SCHEME_NAMES) -> MobileExport:
    """Convert `module` (deploy form) to a .tflite at `path`; see the module docstring.

    hw: the fixed LR input (H, W) (default: one recommended tile box).
    calib: calibration images (folder) for INT8 (default: the bundled sample photos).
    fp32_bytes: an fp32 conversion of the same module at `hw` (fp32 only).
    psnr_budget: INT8: allowed Y-PSNR drop on the held-out sample photos (None: no verdict, no
    mixed precision, the first of `schemes`).
    schemes: the INT8 schemes the verdict may write, in the order tried (:data:`SCHEMES`;
    :data:`INTEGER_SCHEMES`: integer files only, ``convert --tflite-integer``).
    With precision "int8" the verdict may choose the dynamic or a16w8 scheme (:data:`SCHEMES`): the
    result's precision is then "int8-dynamic" / "int16x8" and the file goes beside `path` with "int8"
    in its name replaced by it (``model_int8.tflite`` -> ``model_int8-dynamic.tflite``,
    ``model_int16x8.tflite``), so neither a float-activation nor an int16 file is named int8.
    """
    from ..backends.litert_runner import LiteRtRunner

    _require()
    if precision not in ("fp32", "int8"):
        raise ExportError(f"LiteRT precision must be fp32 or int8, got {precision!r}")
    t0 = time.perf_counter()
    path = Path(path)
    hw = tuple(int(v) for v in (hw or default_hw(spec)))
    details: dict[str, Any] = {"converter": "litert-torch", "io_layout": "NHWC"}
    if precision == "int8":
        data, more = int8_tflite_bytes(module, spec, hw, calib=calib, options=options, psnr_budget=psnr_budget,
                                       schemes=schemes)
        details |= more
        precision = more["scheme"]["precision"]
        if precision != "int8":
            path = path.with_name(path.name.replace("int8", precision) if "int8" in path.name
                                  else f"{path.stem}_{precision}{path.suffix}")
    else:
        data = fp32_bytes if fp32_bytes is not None else convert_fp32_bytes(module, spec, hw)
    runner = LiteRtRunner(data, name=f"litert:{precision}")
    result = MobileExport(files=[path], format="tflite", precision=precision, backend="litert",
                          input_hw=(int(hw[0]), int(hw[1])),
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


def time_vs_fp32(fp32: bytes, quantized: bytes | str | os.PathLike, channels: int, runs: int = 3) -> dict[str, Any]:
    """A quantized .tflite's time on this CPU against the fp32 file of the same size, interleaved
    (:func:`edgesr.timing.time_interleaved`), one thread each: whether the file a verdict chose is
    also faster here (LiteRT's CPU kernels for int16 activations are not XNNPACK's)."""
    import os as _os

    from ..backends.litert_runner import LiteRtRunner
    from ..timing import TimingPolicy, ratio_summary, time_interleaved

    r32, rq = LiteRtRunner(fp32, threads=1), LiteRtRunner(quantized, threads=1)
    x = np.random.default_rng(0).random((1, channels, *r32.input_hw), dtype=np.float32)
    load = _os.getloadavg()
    stats = time_interleaved({"fp32": lambda: r32.run(x), "quantized": lambda: rq.run(x)},
                             TimingPolicy(warmup_seconds=0.0, min_runs=runs, max_runs=runs, min_seconds=0.0))
    ratio = ratio_summary(stats["quantized"], stats["fp32"])
    return {"fp32_ms": round(stats["fp32"].median_ms, 2), "quantized_ms": round(stats["quantized"].median_ms, 2),
            "ratio": ratio["ratio"], "rounds": runs, "threads": 1, "loadavg": [round(v, 2) for v in load],
            "faster_than_fp32": ratio["ratio"] < 1.0, "input_hw": list(r32.input_hw)}


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
