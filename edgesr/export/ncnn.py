"""Deploy form -> ncnn ``.param`` + ``.bin`` via pnnx, in fp32, fp16 storage or INT8.

- **fp32**: ``pnnx.export(..., fp16=False)``. pnnx's default (fp16=True) stores the weights as
  fp16, which is the fp16 artifact, not fp32: edgesr asks for each explicitly.
- **fp16**: fp16 weights in the .bin; apps enable ``opt.use_fp16_storage`` (and on ARM
  ``use_fp16_arithmetic``). Judged by PSNR vs PyTorch fp32.
- **INT8**: ncnn's own INT8 scheme (``ncnn2table`` + ``ncnn2int8``; neither tool ships in the
  ncnn wheel or in Debian 12, so edgesr does what they do, in Python): per-output-channel weight
  scales ``127 / max|w|`` and one input ("bottom blob") scale per convolution, ``127 / max|x|``
  over edgesr's calibration patches (:func:`edgesr.export.mobile.calibration_inputs`), written as
  ``int8_scale_term`` convolutions with int8 weights. ncnn then quantizes each convolution's
  input on the fly and dequantizes its output; everything else stays float.

Shapes are dynamic: pnnx traces at two sizes and ncnn layers are shape-agnostic, so any H/W runs.
The exported pair is checked with the ``ncnn`` Python runtime before it is written.

Python ncnn keeps a pointer, not a copy, of the numpy array an ``ncnn.Mat`` wraps: freeing the
array before ``extract`` returns feeds garbage (black or noisy frames). The runner keeps it alive.
"""

from __future__ import annotations

import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BackendUnavailable, ExportError, QuantizationError
from ..fsutil import atomic_path
from ..spec import Spec
from .mobile import MobileExport, calibration_inputs, channel_repeat_as_concat, compare_with_torch, judge, \
    package_version, photo_crops, quiet_native

EXTRA = "pip install 'edgesr[ncnn]'"
PRECISIONS = ("fp32", "fp16", "int8")
TRACE_SIZES = ((64, 64), (48, 80))  # pnnx traces twice to learn which dims are dynamic
CHECK_SIZES = ((64, 64), (37, 53))

# .bin tags (ncnn ModelBin): a weight blob read with type 0 starts with one of these
TAG_FP32, TAG_FP16, TAG_INT8 = 0x00000000, 0x01306B47, 0x000D4B38


def _require() -> None:
    try:
        with quiet_native():
            import ncnn  # noqa: F401
            import pnnx  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"ncnn export needs pnnx and ncnn ({e.name or e}): {EXTRA}") from None


def versions() -> dict[str, str | None]:
    return {"pnnx": package_version("pnnx"), "ncnn": package_version("ncnn")}


def export_ncnn(module, spec: Spec, param_path: str | Path, *, precision: str = "fp32",
                calib: str | Path | None = None, psnr_budget: float | None = 0.1,
                check: bool = True) -> MobileExport:
    """Write `param_path` (.param) and its .bin beside it; see the module docstring.

    psnr_budget: INT8 only: the Y-PSNR drop (dB) vs fp32 allowed on the held-out sample photos;
    the most sensitive convolutions stay float until it holds (None: all convolutions INT8)."""
    from ..backends.ncnn_runner import NcnnRunner

    _require()
    if precision not in PRECISIONS:
        raise ExportError(f"ncnn precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    t0 = time.perf_counter()
    param_path = Path(param_path)
    if param_path.suffix != ".param":
        raise ExportError(f"{param_path.name}: an ncnn model is a .param file (its weights go to .bin beside it)")
    bin_path = param_path.with_suffix(".bin")
    param, weights = convert_bytes(module, spec, fp16=precision == "fp16")
    details: dict[str, Any] = {"converter": "pnnx", "layers": _layer_types(param)}
    if precision == "int8":
        cal = calibration_inputs(spec, None, calib)
        param, weights, info = quantize_mixed(param, weights, spec, calibrate(param, weights, cal), psnr_budget)
        details |= info | {"calibration_inputs": len(cal),
                           "calibration": "edgesr.quant.calibration.CalibrationSource patches"}
    runner = NcnnRunner(param, weights, name=f"ncnn:{precision}", fp16=precision == "fp16")
    result = MobileExport(files=[param_path, bin_path], format="ncnn", precision=precision, backend="ncnn",
                          input_hw=None, layout="CHW", io=runner.io(), details=details, versions=versions(),
                          static_check={"layers": details["layers"]})
    if check:
        inputs = [x for hw in CHECK_SIZES for x in photo_crops(spec, _fit(hw, spec), n=1, offset=len(hw))]
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


def _fit(hw: Sequence[int], spec: Spec) -> tuple[int, int]:
    m = max(1, spec.size_multiple)
    return tuple(max(spec.min_size, -(-int(v) // m) * m) for v in hw)  # type: ignore[return-value]


def convert_bytes(module, spec: Spec, *, fp16: bool = False) -> tuple[str, bytes]:
    """(.param text, .bin bytes) of `module` through pnnx (dynamic H/W)."""
    import torch

    _require()
    import pnnx

    module = module.eval().float().cpu()
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(1, spec.in_channels, *_fit(hw, spec), generator=gen) for hw in TRACE_SIZES)
    with tempfile.TemporaryDirectory(prefix="edgesr-pnnx-") as tmp:
        pt = Path(tmp) / "model.pt"
        try:
            with quiet_native(), channel_repeat_as_concat(), torch.no_grad():
                pnnx.export(module, str(pt), (a,), (b,), fp16=fp16)
        except Exception as e:  # noqa: BLE001 - tracing and pnnx raise many types
            raise ExportError(f"pnnx (PyTorch -> ncnn) failed: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300] if str(e) else ''}") from None
        param, weights = pt.with_suffix(".ncnn.param"), pt.with_suffix(".ncnn.bin")
        if not param.is_file() or not weights.is_file():
            raise ExportError("pnnx wrote no ncnn model (an operator it cannot convert?)")
        text = param.read_text()
        bad = [t for t in _layer_types(text) if "." in t]  # pnnx leaves unconvertible ops as torch.xxx layers
        if bad:
            raise ExportError(f"ncnn has no layer for {', '.join(sorted(set(bad)))} (pnnx left them unconverted)")
        return text, weights.read_bytes()


# --------------------------------------------------------------------------- .param parsing


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, str] = field(default_factory=dict)  # raw values ('1', '0.5', '2,1,3' for arrays)

    def get(self, key: int, default: float = 0) -> float:
        v = self.params.get(key)
        return default if v is None else float(v)

    def line(self) -> str:
        kv = " ".join(f"{k}={v}" for k, v in self.params.items())
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)} " \
               f"{' '.join(self.bottoms + self.tops)}"
        return f"{head} {kv}".rstrip()


def parse_param(text: str) -> tuple[list[str], list[Layer]]:
    """(header lines, layers) of an ncnn .param text."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0].strip() != "7767517":
        raise ExportError("not an ncnn .param file (magic 7767517 missing)")
    layers = []
    for ln in lines[2:]:
        tok = ln.split()
        typ, name, nb, nt = tok[0], tok[1], int(tok[2]), int(tok[3])
        bottoms, tops = tok[4:4 + nb], tok[4 + nb:4 + nb + nt]
        params = {}
        for kv in tok[4 + nb + nt:]:
            k, _, v = kv.partition("=")
            params[int(k)] = v
        layers.append(Layer(typ, name, bottoms, tops, params))
    return lines[:2], layers


def _layer_types(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for layer in parse_param(text)[1]:
        out[layer.type] = out.get(layer.type, 0) + 1
    return out


def io_names(text: str) -> tuple[list[str], list[str]]:
    """(input blob names, output blob names): Input layers' tops; blobs nobody consumes."""
    _, layers = parse_param(text)
    consumed = {b for la in layers for b in la.bottoms}
    inputs = [t for la in layers if la.type == "Input" for t in la.tops]
    outputs = [t for la in layers for t in la.tops if t not in consumed and la.type != "Input"]
    return inputs, outputs


# --------------------------------------------------------------------------- .bin walking

# Layers whose load_model reads weights, as a list of (kind, count-function): "tagged" blobs start
# with a 4-byte tag (fp32 / fp16 / int8 data), "raw" blobs are plain float32.
def _conv_blobs(la: Layer) -> list[tuple[str, int]]:
    n_out, size = int(la.get(0)), int(la.get(6))
    blobs = [("tagged", size)]
    if int(la.get(5)):
        blobs.append(("raw", n_out))
    scale_term = int(la.get(8))
    if scale_term:
        blobs += [("raw", n_out if la.type != "ConvolutionDepthWise" else int(la.get(7, 1))), ("raw", 1)]
        if scale_term > 100:
            blobs.append(("raw", 1))
    return blobs


_WEIGHTED = {
    "Convolution": _conv_blobs,
    "ConvolutionDepthWise": _conv_blobs,
    "PReLU": lambda la: [("raw", int(la.get(0, 1)))],
    "MemoryData": lambda la: [("raw", max(1, int(la.get(0))) * max(1, int(la.get(1))) * max(1, int(la.get(11)))
                               * max(1, int(la.get(2))))],
    "LayerNorm": lambda la: [("raw", int(la.get(0))), ("raw", int(la.get(0)))] if int(la.get(2, 1)) else [],
    "Padding": lambda la: [("raw", int(la.get(6)))] if int(la.get(6)) else [],
    "InnerProduct": lambda la: [("tagged", int(la.get(2)))] + ([("raw", int(la.get(0)))] if int(la.get(1)) else []),
}
_NO_WEIGHTS = {"Input", "Split", "Concat", "Crop", "Slice", "PixelShuffle", "BinaryOp", "UnaryOp", "ReLU", "Sigmoid",
               "GELU", "Interp", "Pooling", "Reshape", "Permute", "Eltwise", "Reduction", "Flatten", "Noop", "Clip",
               "Swish", "Softmax", "Dropout", "Tile", "ExpandDims", "Squeeze", "HardSwish", "HardSigmoid", "TanH",
               "Erf", "Gather"}


def _blob_bytes(buf: bytes, pos: int, kind: str, count: int) -> int:
    if kind == "raw":
        return 4 * count
    (tag,) = struct.unpack_from("<I", buf, pos)
    if tag == TAG_FP16:
        return 4 + _align4(2 * count)
    if tag == TAG_INT8:
        return 4 + _align4(count)
    if tag == TAG_FP32:
        return 4 + 4 * count
    raise QuantizationError(f"ncnn .bin: unsupported weight encoding (tag 0x{tag:08x})")


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def walk_bin(layers: list[Layer], buf: bytes) -> list[list[tuple[int, int]]]:
    """For each layer, the (offset, length) of each of its weight blobs in the .bin."""
    pos, out = 0, []
    for la in layers:
        spans = []
        if la.type in _WEIGHTED:
            for kind, count in _WEIGHTED[la.type](la):
                n = _blob_bytes(buf, pos, kind, count)
                spans.append((pos, n))
                pos += n
        elif la.type not in _NO_WEIGHTS:
            raise QuantizationError(f"ncnn INT8: layer type {la.type} ({la.name}) is not known to edgesr's .bin "
                                    "reader; use fp32/fp16 for this model")
        out.append(spans)
    if pos != len(buf):
        raise QuantizationError(f"ncnn .bin: read {pos} of {len(buf)} bytes; the layer table does not match")
    return out


def _read_weights(buf: bytes, span: tuple[int, int], count: int) -> np.ndarray:
    off, _ = span
    (tag,) = struct.unpack_from("<I", buf, off)
    if tag == TAG_FP32:
        return np.frombuffer(buf, "<f4", count, off + 4).astype(np.float32)
    if tag == TAG_FP16:
        return np.frombuffer(buf, "<f2", count, off + 4).astype(np.float32)
    raise QuantizationError(f"ncnn INT8: weights are already quantized (tag 0x{tag:08x})")


# --------------------------------------------------------------------------- INT8


def conv_layers(param: str) -> list[str]:
    """Names of the layers ncnn can run in INT8 (Convolution, ConvolutionDepthWise)."""
    return [la.name for la in parse_param(param)[1] if la.type in ("Convolution", "ConvolutionDepthWise")]


def calibrate(param: str, weights: bytes, calibration: Sequence[np.ndarray]) -> dict[str, float]:
    """ncnn2table in Python: the largest |input| of every convolution over `calibration`."""
    from ..backends.ncnn_runner import NcnnRunner

    layers = parse_param(param)[1]
    blobs = sorted({la.bottoms[0] for la in layers if la.type in ("Convolution", "ConvolutionDepthWise")})
    runner = NcnnRunner(param, weights, name="ncnn:calibration")
    amax = {b: 0.0 for b in blobs}
    for x in calibration:
        for blob, value in runner.blobs(x, blobs).items():
            amax[blob] = max(amax[blob], float(np.abs(value).max()))
    return amax


def quantize_int8(param: str, weights: bytes, calibration: Sequence[np.ndarray] | dict[str, float],
                  skip: Sequence[str] = ()) -> tuple[str, bytes, dict[str, Any]]:
    """ncnn2int8 in Python: every Convolution / ConvolutionDepthWise (except the layers named in
    `skip`) gets int8 weights with per-output-channel scales and an input scale from the largest
    |input| seen on `calibration` (NCHW float32 arrays, or the result of :func:`calibrate`)."""
    header, layers = parse_param(param)
    spans = walk_bin(layers, weights)
    convs = [i for i, la in enumerate(layers) if la.type in ("Convolution", "ConvolutionDepthWise")
             and la.name not in skip and not int(la.get(8))]
    if not convs:
        raise QuantizationError("ncnn INT8: no convolution left to quantize")
    amax = calibration if isinstance(calibration, dict) else calibrate(param, weights, calibration)
    out = bytearray()
    pos = 0
    table = {}
    for i, la in enumerate(layers):
        if i not in convs:
            continue
        (w_off, w_len) = spans[i][0]
        out += weights[pos:w_off]
        n_out = int(la.get(0))
        w = _read_weights(weights, spans[i][0], int(la.get(6))).reshape(n_out if la.type == "Convolution"
                                                                          else int(la.get(7, 1)), -1)
        wmax = np.abs(w).max(axis=1)
        w_scale = np.where(wmax > 0, 127.0 / np.maximum(wmax, 1e-30), 1.0).astype(np.float32)
        q = np.clip(np.round(w * w_scale[:, None]), -127, 127).astype(np.int8).reshape(-1)
        blob_max = amax[la.bottoms[0]]
        if not np.isfinite(blob_max):
            raise QuantizationError(f"ncnn INT8: input of {la.name} is not finite on the calibration patches")
        in_scale = np.float32(127.0 / blob_max if blob_max > 0 else 1.0)
        out += struct.pack("<I", TAG_INT8) + q.tobytes() + b"\0" * (_align4(q.size) - q.size)
        pos = w_off + w_len
        for off, n in spans[i][1:]:  # bias (and nothing else: int8_scale_term was 0)
            out += weights[off:off + n]
            pos = off + n
        out += w_scale.astype("<f4").tobytes() + np.array([in_scale], "<f4").tobytes()
        la.params[8] = "2"
        table[la.name] = {"input_max": round(blob_max, 6), "input_scale": float(in_scale)}
    out += weights[pos:]
    text = "\n".join(header + [la.line() for la in layers]) + "\n"
    return text, bytes(out), {"quantized_layers": len(table), "float_layers": list(skip),
                              "scheme": "ncnn int8_scale_term=2: int8 weights per output channel (127/max|w|), "
                                        "int8 input per tensor (127/max|x|, symmetric)",
                              "table": table}



def quantize_mixed(param: str, weights: bytes, spec: Spec, amax: dict[str, float],
                   psnr_budget: float | None) -> tuple[str, bytes, dict[str, Any]]:
    """INT8 with every convolution quantized, then (greedy, like edgesr's ONNX INT8) the one whose
    float version gains the most Y-PSNR kept float, until the drop vs fp32 on the held-out sample
    photos (never the calibration photos) is within `psnr_budget` dB."""
    from ..backends.ncnn_runner import NcnnRunner
    from ..quant.calibration import held_out_eval_set

    pairs = held_out_eval_set(spec.scale).pairs
    ref = NcnnRunner(param, weights, name="ncnn:fp32")

    def score(runner) -> float:
        from ..metrics import psnr_y
        from ..quant.calibration import from_model_output, to_model_input

        vals = [psnr_y(np.clip(from_model_output(runner.run(to_model_input(p.lr, spec)[None])[0], spec), 0, 1),
                       p.hr, spec.scale) for p in pairs]
        return float(np.mean(vals))

    base = score(ref)
    skip: list[str] = []
    q = quantize_int8(param, weights, amax, skip)
    drop_all = drop = base - score(NcnnRunner(q[0], q[1]))
    steps = [{"float_layers": [], "drop": round(drop, 4)}]
    while psnr_budget is not None and drop > psnr_budget:
        left = [n for n in conv_layers(param) if n not in skip]
        if len(left) <= 1:
            break
        trials = []
        for n in left:
            t = quantize_int8(param, weights, amax, skip + [n])
            trials.append((base - score(NcnnRunner(t[0], t[1])), n, t))
        drop, name, q = min(trials, key=lambda r: r[0])
        skip.append(name)
        steps.append({"float_layers": list(skip), "drop": round(drop, 4)})
    text, data, info = q
    return text, data, info | {"eval_set": "sample-held-out", "psnr_fp32": round(base, 4),
                               "drop_all_int8": round(drop_all, 4), "drop": round(drop, 4),
                               "psnr_budget": psnr_budget, "search": steps}
