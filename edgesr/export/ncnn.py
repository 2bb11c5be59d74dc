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
from .mobile import FP32_TOL, MobileExport, compare_with_torch, converter_rewrites, fixed_shape_form, judge, \
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


def _fit(hw: Sequence[int], spec: Spec) -> tuple[int, int]:
    m = max(1, spec.size_multiple)
    return tuple(max(spec.min_size, -(-int(v) // m) * m) for v in hw)  # type: ignore[return-value]


def convert_bytes(module, spec: Spec, *, fp16: bool = False, hw: Sequence[int] | None = None) -> tuple[str, bytes]:
    """(.param text, .bin bytes) of `module` through pnnx: dynamic H/W (traced at two sizes), or
    for `hw` one fixed size (the fixed-shape form traced once, with the fixed-size rewrites; the
    Input layer then declares its W, H, C, which :class:`edgesr.backends.ncnn_runner.NcnnRunner`
    enforces: ncnn layers would otherwise run other sizes with sizes frozen at trace time)."""
    import torch

    _require()
    import pnnx

    module = module.eval().float().cpu()
    gen = torch.Generator().manual_seed(0)
    if hw is None:
        traces = [(torch.rand(1, spec.in_channels, *_fit(s, spec), generator=gen),) for s in TRACE_SIZES]
    else:
        module = fixed_shape_form(module)
        traces = [(torch.rand(1, spec.in_channels, int(hw[0]), int(hw[1]), generator=gen),)]
    with tempfile.TemporaryDirectory(prefix="edgesr-pnnx-") as tmp:
        pt = Path(tmp) / "model.pt"
        try:
            with quiet_native(), converter_rewrites(fixed_size=hw is not None), torch.no_grad():
                pnnx.export(module, str(pt), *traces, fp16=fp16)
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
        if hw is not None:
            text = declare_input_shape(text, (int(hw[0]), int(hw[1])), spec.in_channels)
        return text, weights.read_bytes()


def declare_input_shape(text: str, hw: tuple[int, int], channels: int) -> str:
    """The .param with its Input layer declaring ``0=W 1=H 2=C`` (a fixed-size model)."""
    header, layers = parse_param(text)
    for la in layers:
        if la.type == "Input":
            la.params.update({0: str(hw[1]), 1: str(hw[0]), 2: str(channels)})
    return "\n".join(header + [la.line() for la in layers]) + "\n"


def input_shape(text: str) -> tuple[int, int] | None:
    """The fixed (H, W) an Input layer declares, None for a dynamic model."""
    for la in parse_param(text)[1]:
        if la.type == "Input" and int(la.get(0)) > 0 and int(la.get(1)) > 0:
            return int(la.get(1)), int(la.get(0))
    return None


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
        if v is None:
            return default
        try:
            return float(v)
        except ValueError:
            from ..errors import one_line

            raise ExportError(f"ncnn .param: layer {one_line(self.name[:60])} ({one_line(self.type[:30])}) has "
                              f"{key}={one_line(v[:40])}, not a number") from None

    def line(self) -> str:
        kv = " ".join(f"{k}={v}" for k, v in self.params.items())
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)} " \
               f"{' '.join(self.bottoms + self.tops)}"
        return f"{head} {kv}".rstrip()


def parse_param(text: str) -> tuple[list[str], list[Layer]]:
    """(header lines, layers) of an ncnn .param text."""
    from ..errors import one_line

    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0].strip() != "7767517":
        raise ExportError("not an ncnn .param file (magic 7767517 missing)")
    counts = lines[1].split()
    n_layers = int(counts[0]) if len(counts) == 2 and all(c.isdigit() for c in counts) else -1
    # ncnn sizes its layer and blob tables from this line before reading a layer: a count the file
    # does not back would allocate whatever it declares
    if n_layers != len(lines) - 2:
        raise ExportError(f"not a consistent ncnn .param file: its header declares {one_line(lines[1][:60])} "
                          f"(layer count, blob count) for {len(lines) - 2} layer lines")
    layers = []
    for i, ln in enumerate(lines[2:], 3):
        tok = ln.split()
        try:
            typ, name, nb, nt = tok[0], tok[1], int(tok[2]), int(tok[3])
            if nb < 0 or nt < 0 or len(tok) < 4 + nb + nt:
                raise ValueError("fewer blob names than declared")
            bottoms, tops = tok[4:4 + nb], tok[4 + nb:4 + nb + nt]
            params = {}
            for kv in tok[4 + nb + nt:]:
                k, _, v = kv.partition("=")
                params[int(k)] = v
        except (IndexError, ValueError) as e:
            raise ExportError(f"not a valid ncnn .param file: line {i} ({one_line(ln[:60])}) is not "
                              f"'type name n_bottom n_top blobs... key=value...' ({one_line(e)})") from None
        layers.append(Layer(typ, name, bottoms, tops, params))
    if int(counts[1]) > sum(len(la.tops) for la in layers):
        raise ExportError(f"not a consistent ncnn .param file: its header declares {int(counts[1])} blobs, its "
                          f"layers produce {sum(len(la.tops) for la in layers)}")
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
