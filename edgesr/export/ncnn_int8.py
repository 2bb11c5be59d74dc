"""ncnn INT8 in ncnn's own scheme, done in Python (``ncnn2table`` + ``ncnn2int8`` do not ship in
the ncnn wheel or in Debian 12), with the rewrites that keep SR pictures.

ncnn quantizes what a Convolution reads: its input ("bottom blob") with one symmetric scale
``127 / max|x|`` (no zero point), its weights per output channel ``127 / max|w|``; the int32 sum
is dequantized to float, the bias and the fused activation run in float, and everything else
(residual adds, PReLU, PixelShuffle) stays float. That is the placement of edgesr's ONNX
``trt`` profile (:mod:`edgesr.quant.profiles`), so the same steps apply
(see :mod:`edgesr.export.mobile_int8` for the ones done on the PyTorch module):

* **zero-centring** (:func:`center_conv_inputs`, exact): a [0, R] conv input (a ReLU output,
  the [0, 1] picture) quantized symmetrically wastes half of the int8 codes. The input is
  shifted by ``c = (lo + hi) / 2`` before it is quantized: a producing Convolution with a fused
  ReLU gets ``bias - c`` and a Clip(min=-c) activation (``max(z, 0) - c == max(z - c, -c)``),
  any other producer gets a float ``BinaryOp`` subtracting ``c``; the consumer pads with ``-c``
  (an explicit float ``Padding`` layer, its own padding set to 0, so the border still means 0)
  and its bias gains ``c * sum(W)`` per output channel. Checked in fp32 on the calibration data.
* **scales** from the calibrated range of each (centred) input (:func:`blob_ranges`); a fixed-size
  model is calibrated on crops of its own input size (:func:`edgesr.export.mobile.deploy_size_crops`).
* **mixed precision** (:meth:`NcnnInt8.verdict`): when the Y-PSNR drop on the held-out sample
  photos exceeds the budget, the costliest convolutions stay float until it holds
  (:func:`edgesr.export.mobile_int8.float_layer_search`). A convolution kept float computes with
  its exact weights and bias (:func:`with_float_weights`), not the int8-grid ones the preparation
  baked for quantizing it: SAFMN++'s costliest layer lost 0.054 dB held-out to that rounding alone.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

import numpy as np

from ..errors import QuantizationError
from ..spec import Spec
from .ncnn_format import TAG_FP32, TAG_INT8, Layer, _align4, _read_weights, parse_param, walk_bin

# ConvolutionDepthWise stays float: its INT8 scale layout differs between ncnn versions (per-group
# vs one weight scale per int8_scale_term value), and depthwise convs cost little
CONV_TYPES = ("Convolution",)
FLT_MAX = 3.4028234663852886e38
CENTER_MIN_GAIN = 1.25  # centre when max(|lo|, |hi|) / ((hi - lo) / 2) reaches this
EXACT_TOL = 1e-4


# --------------------------------------------------------------------------- model editing


class NcnnModel:
    """A .param/.bin pair as editable layers, each with its raw weight chunk."""

    def __init__(self, param: str, weights: bytes):
        self.header, self.layers = parse_param(param)
        spans = walk_bin(self.layers, weights)
        self.chunks = [b"".join(weights[o:o + n] for o, n in s) for s in spans]

    def text(self) -> str:
        blobs = {b for la in self.layers for b in la.bottoms + la.tops}
        head = [self.header[0], f"{len(self.layers)} {len(blobs)}"]
        return "\n".join(head + [la.line() for la in self.layers]) + "\n"

    def bin(self) -> bytes:
        return b"".join(self.chunks)

    def index(self, name: str) -> int:
        return next(i for i, la in enumerate(self.layers) if la.name == name)

    def producer(self, blob: str) -> int | None:
        return next((i for i, la in enumerate(self.layers) if blob in la.tops), None)

    def consumers(self, blob: str) -> list[int]:
        return [i for i, la in enumerate(self.layers) if blob in la.bottoms]

    def conv_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(float weights O x rest, bias or None) of Convolution layer i (fp32/fp16 weights)."""
        la, chunk = self.layers[i], self.chunks[i]
        n_out, size = int(la.get(0)), int(la.get(6))
        w = _read_weights(chunk, (0, 0), size).reshape(n_out, -1)
        nw = 4 + (4 * size if struct.unpack_from("<I", chunk, 0)[0] == TAG_FP32 else _align4(2 * size))
        bias = np.frombuffer(chunk, "<f4", n_out, nw).astype(np.float64) if int(la.get(5)) else None
        return w.astype(np.float64), bias

    def set_conv(self, i: int, w: np.ndarray, bias: np.ndarray | None) -> None:
        """Store float32 weights (tag fp32) and bias of Convolution layer i (not yet INT8)."""
        la = self.layers[i]
        if int(la.get(8)):
            raise QuantizationError(f"ncnn: {la.name} is already INT8")
        data = struct.pack("<I", TAG_FP32) + np.ascontiguousarray(w, "<f4").tobytes()
        if bias is not None:
            la.params[5] = "1"
            data += np.ascontiguousarray(bias, "<f4").tobytes()
        self.chunks[i] = data

    def insert(self, at: int, layer: Layer) -> None:
        self.layers.insert(at, layer)
        self.chunks.insert(at, b"")


def _pads(la: Layer) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of a Convolution; None for 'same'-style negative pads."""
    left = int(la.get(4))
    right = int(la.get(15, left))
    top = int(la.get(14, left))
    bottom = int(la.get(16, top))
    pads = (top, bottom, left, right)
    return None if min(pads) < 0 else pads


# --------------------------------------------------------------------------- calibration


def conv_layers(param: str) -> list[str]:
    """Names of the layers edgesr runs in INT8 (Convolution; depthwise convolutions stay float)."""
    return [la.name for la in parse_param(param)[1] if la.type in CONV_TYPES]


def blob_ranges(param: str, weights: bytes, calibration: Sequence[np.ndarray]) -> dict[str, tuple[float, float]]:
    """ncnn2table in Python: (min, max) of every convolution input over `calibration`."""
    from ..backends.ncnn_runner import NcnnRunner

    layers = parse_param(param)[1]
    blobs = sorted({la.bottoms[0] for la in layers if la.type in CONV_TYPES})
    runner = NcnnRunner(param, weights, name="ncnn:calibration")
    lo = {b: np.inf for b in blobs}
    hi = {b: -np.inf for b in blobs}
    for x in calibration:
        for blob, value in runner.blobs(x, blobs).items():
            lo[blob] = min(lo[blob], float(value.min()))
            hi[blob] = max(hi[blob], float(value.max()))
    for b in blobs:
        if not (np.isfinite(lo[b]) and np.isfinite(hi[b])):
            raise QuantizationError(f"ncnn INT8: blob {b} is not finite on the calibration patches")
    return {b: (lo[b], hi[b]) for b in blobs}


def calibrate(param: str, weights: bytes, calibration: Sequence[np.ndarray]) -> dict[str, float]:
    """The largest |input| of every convolution over `calibration` (the INT8 input scale is 127 / it)."""
    return {b: max(abs(lo), abs(hi)) for b, (lo, hi) in blob_ranges(param, weights, calibration).items()}


# --------------------------------------------------------------------------- zero-centring


def center_conv_inputs(param: str, weights: bytes, ranges: dict[str, tuple[float, float]],
                       min_gain: float = CENTER_MIN_GAIN) -> tuple[str, bytes, list[dict[str, Any]]]:
    """Shift every (group 1) Convolution input whose calibrated range [lo, hi] would waste
    symmetric int8 codes; see the module docstring. Returns (param, bin, what was done)."""
    model = NcnnModel(param, weights)
    done = []
    for name in [la.name for la in model.layers if la.type == "Convolution"]:
        i = model.index(name)
        b = model.layers[i]
        if int(b.get(8)) or b.bottoms[0] not in ranges:
            continue
        pads = _pads(b)
        if pads is None:
            continue
        t = b.bottoms[0]
        lo, hi = ranges[t]
        half = (hi - lo) / 2.0
        if not half > 0 or max(abs(lo), abs(hi)) / half < min_gain:
            continue
        c = float(np.float32((hi + lo) / 2.0))
        p = model.producer(t)
        pl = model.layers[p] if p is not None else None
        if (p is not None and pl is not None and pl.type == "Convolution" and int(pl.get(9)) == 1 and not int(pl.get(8))
                and model.consumers(t) == [i]):
            w, bias = model.conv_arrays(p)
            model.set_conv(p, w, (bias if bias is not None else np.zeros(w.shape[0])) - c)
            pl.params[9] = "3"
            pl.params.pop(10, None)
            pl.params[-23310] = f"2,{-c:.9e},{FLT_MAX:.9e}"
            shifted, how = t, "relu->clip"
        else:
            shifted = f"{t}_c_{name}"
            model.insert(i, Layer("BinaryOp", f"{name}_center", [t], [shifted], {0: "1", 1: "1", 2: f"{c:.9e}"}))
            i += 1
            how = "sub"
        if any(pads):
            padded = f"{t}_p_{name}"
            top, bottom, left, right = pads
            model.insert(i, Layer("Padding", f"{name}_pad", [shifted], [padded],
                                  {0: str(top), 1: str(bottom), 2: str(left), 3: str(right), 4: "0",
                                   5: f"{-c:.9e}"}))
            i += 1
            for k in (4, 14, 15, 16):
                b.params[k] = "0"
            shifted = padded
        b.bottoms[0] = shifted
        w, bias = model.conv_arrays(i)
        model.set_conv(i, w, (bias if bias is not None else np.zeros(w.shape[0])) + c * w.sum(axis=1))
        done.append({"conv": name, "blob": t, "shift": c, "lo": lo, "hi": hi, "how": how})
    return model.text(), model.bin(), done


# --------------------------------------------------------------------------- quantization


def quantize_int8(param: str, weights: bytes, amax: dict[str, float],
                  skip: Sequence[str] = ()) -> tuple[str, bytes, dict[str, Any]]:
    """ncnn2int8 in Python: every Convolution (except the layers named in `skip`) gets int8
    weights with per-output-channel scales ``127 / max|w|`` and an input scale
    ``127 / amax[input blob]`` (``int8_scale_term=2``)."""
    model = NcnnModel(param, weights)
    convs = [i for i, la in enumerate(model.layers) if la.type in CONV_TYPES and la.name not in skip
             and not int(la.get(8))]
    if not convs and not any(la.type in CONV_TYPES for la in model.layers):
        raise QuantizationError("ncnn INT8: the model has no convolution to quantize")
    table = {}
    for i in convs:
        la, chunk = model.layers[i], model.chunks[i]
        size = int(la.get(6))
        w = _read_weights(chunk, (0, 0), size).reshape(int(la.get(0)), -1)
        wmax = np.abs(w).max(axis=1)
        w_scale = np.where(wmax > 0, 127.0 / np.maximum(wmax, 1e-30), 1.0).astype(np.float32)
        q = np.clip(np.round(w * w_scale[:, None]), -127, 127).astype(np.int8).reshape(-1)
        blob_max = amax.get(la.bottoms[0])
        if blob_max is None or not np.isfinite(blob_max):
            raise QuantizationError(f"ncnn INT8: no finite calibrated range for the input of {la.name}")
        in_scale = np.float32(127.0 / blob_max if blob_max > 0 else 1.0)
        nw = 4 + (4 * size if struct.unpack_from("<I", chunk, 0)[0] == TAG_FP32 else _align4(2 * size))
        model.chunks[i] = (struct.pack("<I", TAG_INT8) + q.tobytes() + b"\0" * (_align4(q.size) - q.size)
                           + chunk[nw:] + w_scale.astype("<f4").tobytes() + np.array([in_scale], "<f4").tobytes())
        la.params[8] = "2"
        table[la.name] = {"input_max": round(float(blob_max), 6), "input_scale": float(in_scale)}
    return model.text(), model.bin(), {
        "quantized_layers": len(table), "float_layers": list(skip), "table": table,
        "scheme": "ncnn int8_scale_term=2: int8 weights per output channel (127/max|w|), "
                  "int8 input per tensor (127/max|x|, symmetric)"}


def max_abs_change(a: tuple[str, bytes], b: tuple[str, bytes], inputs: Sequence[np.ndarray]) -> float:
    from ..backends.ncnn_runner import NcnnRunner

    ra, rb = NcnnRunner(*a, name="ncnn:a"), NcnnRunner(*b, name="ncnn:b")
    return max(float(np.abs(ra.run(x) - rb.run(x)).max()) for x in inputs)


def with_float_weights(param: str, weights: bytes, layers: dict[str, tuple[np.ndarray, np.ndarray]]
                       ) -> tuple[str, bytes]:
    """(param, bin) with each named float Convolution's weights replaced: ``layers`` maps a layer
    name to (weights O x rest, bias change per output channel)."""
    model = NcnnModel(param, weights)
    for name, (w, delta) in layers.items():
        i = model.index(name)
        _, bias = model.conv_arrays(i)
        model.set_conv(i, w, (bias if bias is not None else np.zeros(w.shape[0])) + delta)
    return model.text(), model.bin()


class NcnnInt8:
    """The INT8 recipe of one module: prepared once (:func:`edgesr.export.mobile_int8.prepare_int8`),
    converted by pnnx (dynamic shapes, or one conversion per size for a fixed-size model),
    zero-centred, calibrated, quantized; :meth:`verdict` scores it on the held-out photos."""

    def __init__(self, module, spec: Spec, calib=None, options=None, fixed: bool = False):
        from .mobile import calibration_inputs
        from .mobile_int8 import Int8Options, prepare_int8

        self.module, self.spec, self.calib, self.fixed = module, spec, calib, fixed
        self.options = options or Int8Options()
        self.unrounded: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}  # conv -> exact (W, b)
        self.prepared, self.prep = prepare_int8(module, calibration_inputs(spec, None, calib), self.options,
                                                symmetric=True, unrounded=self.unrounded)
        self._ready: dict = {}
        self._calibration: dict = {}  # size key -> calibration inputs (ready() and the exact-weights check share them)
        self._shifts: dict = {}  # size key -> {conv layer: zero-centring shift of its input}
        self._exact: dict = {}  # size key -> {conv layer: (exact W, bias change)}
        self.exact_check: dict[str, float] = {}  # size -> max |ncnn, float layers exact - PyTorch|
        self.centring: dict[str, Any] = {}
        self.names_hw: Any = None  # fixed-size models: the size whose layer names `skip` uses (the verdict's)

    def _key(self, hw) -> Any:
        return (int(hw[0]), int(hw[1])) if self.fixed else None

    def reference(self, hw=None) -> tuple[str, bytes]:
        """The unprepared fp32 model (at `hw` when fixed-size)."""
        from .ncnn_convert import convert_bytes

        key = ("ref", self._key(hw) if hw is not None else None)
        if key not in self._ready:
            self._ready[key] = convert_bytes(self.module, self.spec, hw=key[1])
        return self._ready[key]

    def ready(self, hw=None) -> tuple[str, bytes, dict[str, float]]:
        """(param, bin, input amax) of the prepared, centred fp32 model, ready to quantize."""
        key = self._key(hw) if hw is not None else None
        if key not in self._ready:
            from .ncnn_convert import convert_bytes

            cal = self.calibration(key)
            param, weights = convert_bytes(self.prepared, self.spec, hw=key)
            if self.options.center:
                p2, w2, done = center_conv_inputs(param, weights, blob_ranges(param, weights, cal))
                if done:
                    change = max_abs_change((param, weights), (p2, w2), cal[: min(4, len(cal))])
                    if not change <= EXACT_TOL:
                        raise QuantizationError(f"ncnn zero-centring changed the fp32 output by {change:.2e} "
                                                f"(> {EXACT_TOL})")
                    param, weights = p2, w2
                    self.centring = {"inputs": done, "max_abs_change": change}
                    self._shifts[key] = {d["conv"]: d["shift"] for d in done}
            self._ready[key] = (param, weights, calibrate(param, weights, cal))
        return self._ready[key]

    def calibration(self, key) -> list[np.ndarray]:
        """Calibration inputs at size `key` (None: the dynamic model's patches): for a fixed size,
        crops of that size (:func:`edgesr.export.mobile.deploy_size_crops`); made once per size."""
        from .mobile import calibration_inputs, deploy_size_crops

        if key not in self._calibration:
            self._calibration[key] = calibration_inputs(self.spec, None, self.calib) if key is None else \
                deploy_size_crops(self.spec, key, self.calib)
        return self._calibration[key]

    def exact_weights(self, hw) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{conv layer at `hw`: (exact weights, bias change)}: what a layer kept float computes with
        instead of the prepared int8-grid weights. Layers are matched to the PyTorch convolutions by
        their prepared weights; once per size the whole set is checked: with every matched layer
        exact, the ncnn model must match PyTorch with the same layers exact within 1e-4."""
        import copy

        import torch

        key = self._key(hw) if hw is not None else None
        if key in self._exact:
            return self._exact[key]
        param, weights, _ = self.ready(hw)
        from .mobile_int8 import conv_modules

        convs = conv_modules(self.prepared)
        by_bytes = {convs[n].weight.detach().double().numpy().reshape(convs[n].out_channels, -1).tobytes(): n
                    for n in self.unrounded if n in convs}
        model = NcnnModel(param, weights)
        shifts = self._shifts.get(key, {})
        table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        matched: dict[str, str] = {}
        for i, la in enumerate(model.layers):
            if la.type not in CONV_TYPES:
                continue
            w_prep, _ = model.conv_arrays(i)
            name = by_bytes.get(w_prep.tobytes())
            if name is None:
                continue
            w_exact, b_exact = self.unrounded[name]
            w_exact = w_exact.reshape(w_exact.shape[0], -1)
            b_prep = convs[name].bias
            delta = ((b_exact if b_exact is not None else 0.0)
                     - (b_prep.detach().double().numpy() if b_prep is not None else 0.0)
                     + shifts.get(la.name, 0.0) * (w_exact.sum(axis=1) - w_prep.sum(axis=1)))
            table[la.name] = (w_exact, np.broadcast_to(delta, (w_exact.shape[0],)).astype(np.float64))
            matched[la.name] = name
        if table:  # the check: every matched layer exact, in ncnn and in PyTorch
            ref = copy.deepcopy(self.prepared).eval()
            ref_convs = conv_modules(ref)
            with torch.no_grad():
                for name in matched.values():
                    w_exact, b_exact = self.unrounded[name]
                    ref_convs[name].weight.copy_(torch.from_numpy(w_exact).to(ref_convs[name].weight.dtype))
                    if ref_convs[name].bias is not None:
                        b = b_exact if b_exact is not None else np.zeros(w_exact.shape[0])
                        ref_convs[name].bias.copy_(torch.from_numpy(b).to(ref_convs[name].bias.dtype))
                x = self.calibration(key)[0]
                want = ref(torch.from_numpy(x)).numpy()
            from ..backends.ncnn_runner import NcnnRunner

            got = NcnnRunner(*with_float_weights(param, weights, table), name="ncnn:exact-check").run(x)
            change = float(np.abs(got - want).max())
            if not change <= EXACT_TOL:
                raise QuantizationError(f"ncnn: the float layers' exact weights do not reproduce PyTorch ({change:.2e} "
                                        f"> {EXACT_TOL})")
            self.exact_check[str(key)] = change
        self._exact[key] = table
        return table

    def build(self, hw=None, skip: Sequence[str] = ()) -> tuple[str, bytes, dict[str, Any]]:
        """INT8 (.param, .bin, info) at `hw`; `skip`: convolutions kept float, named as in the
        conversion the verdict ran (translated to this size's names, see :meth:`names_at`)."""
        param, weights, amax = self.ready(hw)
        names = self.names_at(hw, skip)
        exact = {n: t for n, t in self.exact_weights(hw).items() if n in names} if names else {}
        if exact:
            param, weights = with_float_weights(param, weights, exact)
        text, data, info = quantize_int8(param, weights, amax, names)
        return text, data, info | {"float_layers_exact_weights": sorted(exact)}

    def names_at(self, hw, skip: Sequence[str]) -> list[str]:
        """The convolutions `skip` names at the verdict's size, as named in the conversion at `hw`.
        pnnx numbers layers per conversion, and a fixed-size model's conversions at other sizes
        can number them differently (SAFMN++ at 70x70 or 86x57: its exact pooling adds ops, and
        ``conv_15`` there is another layer or none, measured), so a convolution is matched by its
        weights, which are the same prepared tensor at every size."""
        if not skip or self.names_hw is None or self._key(hw) == self._key(self.names_hw):
            return list(skip)
        here = {k: name for name, k in self._conv_weights(hw).items()}
        there = self._conv_weights(self.names_hw)
        out = []
        for name in skip:
            if there.get(name) not in here:
                raise QuantizationError(f"ncnn INT8: the float layer {name} has no convolution with its weights in "
                                        f"the conversion at {hw}")
            out.append(here[there[name]])
        return out

    def _conv_weights(self, hw) -> dict[str, bytes]:
        param, weights, _ = self.ready(hw)
        model = NcnnModel(param, weights)
        return {la.name: model.conv_arrays(i)[0].tobytes() for i, la in enumerate(model.layers)
                if la.type in CONV_TYPES}

    def details(self) -> dict[str, Any]:
        return {"calibration": ("crops of the input size from the calibration photos (edgesr.export.mobile."
                                "deploy_size_crops)" if self.fixed else
                                "edgesr.quant.calibration.CalibrationSource patches"),
                "float_layer_weights": "exact (unrounded) weights and bias; max |ncnn - PyTorch| with every convolution "
                                "float, per size: " + (", ".join(f"{k} {v:.1e}" for k, v in self.exact_check.items())
                                                       or "not needed"),
                "ranges": "min-max of each convolution input (after zero-centring)",
                "options": self.options.to_dict(), "preparation": self.prep.to_dict(), "centring": self.centring}

    def verdict(self, psnr_budget: float | None) -> tuple[list[str], dict[str, Any]]:
        """(float layers, verdict record): the held-out Y-PSNR drop with every convolution INT8 and,
        above `psnr_budget` dB, the costliest convolutions kept float until it holds
        (:func:`edgesr.export.mobile_int8.float_layer_search`)."""
        from ..quant.calibration import held_out_eval_set
        from .mobile_int8 import float_layer_search

        pairs = held_out_eval_set(self.spec.scale).pairs
        sizes = [p.lr.shape[:2] for p in pairs]
        self.names_hw = sizes[0]  # the layer names the search uses (and returns)
        base = float(np.mean([_score(*self.reference(hw), self.spec, [p]) for hw, p in zip(sizes, pairs)]))
        memo: dict[tuple[str, ...], float] = {}

        def drop_of(skip: Sequence[str]) -> float:
            key = tuple(sorted(skip))
            if key not in memo:
                vals = [_score(*self.build(hw, skip)[:2], self.spec, [p]) for hw, p in zip(sizes, pairs)]
                memo[key] = base - float(np.mean(vals))
            return memo[key]

        skip, drop, steps = float_layer_search(conv_layers(self.ready(sizes[0])[0]), drop_of, psnr_budget)
        return skip, {"eval_set": "sample-held-out (" + ", ".join(p.name for p in pairs) + ")",
                      "psnr_fp32": round(base, 4), "drop_all_int8": steps[0]["drop"], "drop": round(drop, 4),
                      "psnr_budget": psnr_budget, "within_budget": psnr_budget is None or drop <= psnr_budget,
                      "float_layers": skip, "search": steps}


def _score(param: str, weights: bytes, spec: Spec, pairs) -> float:
    from ..backends.ncnn_runner import NcnnRunner
    from ..metrics import psnr_y
    from ..quant.calibration import from_model_output, to_model_input

    runner = NcnnRunner(param, weights, name="ncnn:eval")
    vals = [psnr_y(np.clip(from_model_output(runner.run(to_model_input(p.lr, spec)[None])[0], spec), 0, 1),
                   p.hr, spec.scale) for p in pairs]
    return float(np.mean(vals))


def int8_ncnn(module, spec: Spec, *, calib=None, psnr_budget: float | None = 0.1, options=None,
              hw: Sequence[int] | None = None) -> tuple[str, bytes, dict[str, Any]]:
    """(INT8 .param text, .bin bytes, details) of `module` through :class:`NcnnInt8`, with the
    held-out verdict and mixed precision when `psnr_budget` is not None. `hw`: a fixed input size
    (for models pnnx cannot convert with dynamic shapes), None: dynamic."""
    recipe = NcnnInt8(module, spec, calib, options, fixed=hw is not None)
    skip: list[str] = []
    verdict = None
    if psnr_budget is not None:
        skip, verdict = recipe.verdict(psnr_budget)
    text, data, info = recipe.build(hw, skip)
    return text, data, info | recipe.details() | {"verdict": verdict}
