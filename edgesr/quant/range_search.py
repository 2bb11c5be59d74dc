"""Activation ranges of conv inputs chosen by the output error they cause, not by min-max.

ORT's min-max calibration gives every quantized tensor the full range it reached on the
calibration patches. For a heavy-tailed tensor that spends the 8-bit levels on a few outliers:
RLFN's last block output (the input of ``conv_2``) has a standard deviation of 2.0 and reaches
+-55, so it is quantized in steps of 0.43; ``conv_2`` made int8 alone costs 0.106 dB on the
held-out set, and all of it comes from its input, none from its weights (docs/int8.md, "RLFN's
two 3x3 convs").

For every tensor whose quantized readers are all Convs (``placement="inputs"`` profiles: the Q/DQ
pair sits on the conv input) the range is shrunk by a factor from a fixed grid (1 = min-max):

1. the factors are ranked by the squared error of the READERS' outputs, ``sum_b ||conv_b(fq(x) - x)||^2``
   (float weights, no bias; ``fq`` = the runtime's quantize-dequantize, ORT's scale / zero-point rule),
   on the calibration patches - cheap, PyTorch convs on the tensor's values;
2. min-max and the best few factors that beat it there are compared by the error of the MODEL's
   output against fp32, only this tensor quantized (ONNX Runtime, one run each): the readers' error
   alone prefers clipping some tensors whose outliers matter downstream (RLFN's block-1 residual sum:
   0.7x its range lowered the conv's error by 42 % and cost 0.25 dB held-out);
3. all choices together must lower the model's output error against all min-max ranges together.

Nothing here looks at the evaluation set. Measured, it is OFF by default (QuantConfig.range_search):
see docs/int8.md for where it helps and where it does not.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

# range factors tried (1.0: ORT's min-max range)
FACTORS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
MAX_PIXELS = 32 * 48 * 48  # LR pixels of calibration input for the local ranking (bounds its time)
PROBE_PIXELS = 16 * 48 * 48  # ... and for each end-to-end probe (one model run each)


@dataclass
class RangeChoice:
    tensor: str
    readers: list[str]
    factor: float
    low: float  # the chosen range
    high: float
    error_minmax: float  # readers' output MSE with the min-max range
    error: float  # ... with the chosen one


@dataclass
class RangeSearchReport:
    factors: list[float]
    patches: int
    changed: list[RangeChoice] = field(default_factory=list)
    kept: int = 0  # tensors searched whose min-max range was best
    skipped: dict[str, str] = field(default_factory=dict)
    output_error_minmax: float | None = None  # model output vs fp32, squared error, every searched tensor quantized
    output_error: float | None = None  # ... with the chosen ranges
    rejected: str | None = None  # why no choice was kept although some tensors had better ranges alone
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def qparams(low: float, high: float, symmetric: bool, signed: bool) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) ORT's QDQ quantizer sets for the calibrated range [low, high]
    (compute_scale_zp: the range always includes 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    if symmetric:
        m = max(abs(low), abs(high))
        low, high = -m, m
        qmin, qmax = (-127, 127) if signed else (0, 255)
    else:
        qmin, qmax = (-128, 127) if signed else (0, 255)
    scale = (high - low) / (qmax - qmin) if high > low else 1.0
    zp = 0 if symmetric and signed else int(round(qmin - low / scale))
    return scale, zp, qmin, qmax


def fake_quant(x: np.ndarray, low: float, high: float, symmetric: bool, signed: bool) -> np.ndarray:
    """x quantized and dequantized on the range [low, high] as the runtime's QDQ pair does."""
    scale, zp, _, _ = qparams(low, high, symmetric, signed)
    lo_q, hi_q = (-128, 127) if signed else (0, 255)  # QuantizeLinear saturates to its type, not to qmin/qmax
    return ((np.clip(np.round(x / scale) + zp, lo_q, hi_q) - zp) * scale).astype(x.dtype)


def tensor_range(td) -> tuple[float, float] | None:
    """(low, high) of a per-tensor calibrated range (ORT TensorData); None otherwise."""
    try:
        lo, hi = td.range_value
    except AttributeError:
        return None
    lo, hi = np.asarray(lo), np.asarray(hi)
    if lo.size != 1 or hi.size != 1:
        return None  # a per-channel range: not what the graph quantizes activations with
    return float(lo.reshape(-1)[0]), float(hi.reshape(-1)[0])


def search_ranges(model, ranges, patches: np.ndarray, quantized_nodes: set[str], *, symmetric: bool, signed: bool,
                  skip: set[str] | frozenset[str] = frozenset(), factors=FACTORS, max_pixels: int = MAX_PIXELS,
                  probe_pixels: int = PROBE_PIXELS, candidates: int = 3, threads: int | None = None) -> RangeSearchReport:
    """Shrink, in `ranges` (ORT TensorsData, in place), the range of tensors read only by Convs in
    `quantized_nodes` where that lowers the model's output error on the calibration patches.

    Two stages per tensor: the `factors` ranked by the readers' output error (cheap, PyTorch convs on
    the tensor's values); then the min-max range and the `candidates` best of those that beat it
    locally are compared by the error of the MODEL's output (only this tensor quantized, in ONNX
    Runtime) - the local error alone misjudges tensors whose clipped outliers matter downstream
    (docs/int8.md, "RLFN"). Finally all choices together must beat all min-max ranges together
    on the model's output, or none is kept. `skip`: tensors whose quantization is fixed otherwise (the
    exact 8-bit picture). `max_pixels` / `probe_pixels`: at most this many LR pixels of `patches` enter
    the local ranking / each end-to-end probe (the first patches)."""
    t0 = time.perf_counter()
    report = _search(model, ranges, patches, quantized_nodes, symmetric, signed, skip, factors, max_pixels,
                     probe_pixels, candidates, threads)
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def _search(model, ranges, patches, quantized_nodes, symmetric, signed, skip, factors, max_pixels, probe_pixels,
            candidates, threads) -> RangeSearchReport:
    import torch
    from onnx import numpy_helper

    from .evaluate import tensors_over_batches
    from .refine import _conv_attrs

    per = int(np.prod(patches.shape[2:])) if patches.ndim == 4 else 1
    patches = patches[: max(1, max_pixels // max(per, 1))]
    report = RangeSearchReport(factors=[float(f) for f in factors], patches=len(patches))
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        if n.name in quantized_nodes:
            readers.setdefault(n.input[0], []).append(n)
    convs: dict[str, list] = {}
    for t, nodes in readers.items():
        if t in skip:
            continue
        bad = next((n for n in nodes if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits), None)
        if bad is not None:
            report.skipped[t] = f"read by {bad.op_type} {bad.name}"
            continue
        at = [_conv_attrs(n) for n in nodes]
        if any(a["auto_pad"] != "NOTSET" for a in at) or any(len(inits[n.input[1]].dims) != 4 for n in nodes):
            report.skipped[t] = "not a 2-D conv with explicit pads"
            continue
        if t not in ranges or tensor_range(ranges[t]) is None:
            report.skipped[t] = "no per-tensor calibrated range"
            continue
        convs[t] = [(n.name, torch.from_numpy(numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)), a)
                    for n, a in zip(nodes, at)]
    if not convs:
        return report
    names = list(convs)
    local = {t: np.zeros(len(factors)) for t in names}
    with torch.inference_mode():
        # chunks of at most 8 48-px patches' pixels: every searched tensor of a chunk is held at once
        for values in tensors_over_batches(model, names, patches, threads, chunk=max(1, 8 * 48 * 48 // per)):
            for t, x in zip(names, values):
                lo, hi = tensor_range(ranges[t])  # type: ignore[misc]
                for k, f in enumerate(factors):
                    e = torch.from_numpy(fake_quant(x, lo * f, hi * f, symmetric, signed) - x)
                    for _, w, a in convs[t]:
                        local[t][k] += float(_conv(e, w, a).double().pow(2).sum())
    probe = _OutputError(model, patches[: max(1, probe_pixels // max(per, 1))], symmetric, signed, threads)
    chosen: dict[str, tuple[float, float, float]] = {}  # tensor -> (factor, e2e error min-max, e2e error)
    for t in names:
        lo, hi = tensor_range(ranges[t])  # type: ignore[misc]
        better = [k for k in np.argsort(local[t]) if k != 0 and local[t][k] < local[t][0]][:candidates]
        if not better:
            report.kept += 1
            continue
        errs = {0: probe({t: (lo, hi)})} | {int(k): probe({t: (lo * factors[k], hi * factors[k])}) for k in better}
        k = min(errs, key=lambda i: errs[i])
        if k == 0 or not errs[k] < errs[0]:
            report.kept += 1
            continue
        chosen[t] = (float(factors[k]), errs[0], errs[k])
    if not chosen:
        return report
    minmax: dict[str, tuple[float, float]] = {t: r for t in names if (r := tensor_range(ranges[t])) is not None}
    together = probe({t: (lo * chosen[t][0], hi * chosen[t][0]) if t in chosen else (lo, hi)
                      for t, (lo, hi) in minmax.items()})
    baseline = probe(minmax)
    report.output_error_minmax, report.output_error = baseline, together
    if not together < baseline:
        report.kept += len(chosen)
        report.rejected = f"the chosen ranges together raise the output error ({baseline:.3e} -> {together:.3e})"
        return report
    for t, (f, e0, e1) in chosen.items():
        lo, hi = minmax[t]
        td = ranges[t]
        td.lowest = np.asarray(lo * f, dtype=np.asarray(td.lowest).dtype).reshape(np.shape(td.lowest))
        td.highest = np.asarray(hi * f, dtype=np.asarray(td.highest).dtype).reshape(np.shape(td.highest))
        report.changed.append(RangeChoice(t, [c[0] for c in convs[t]], f, lo * f, hi * f, e0, e1))
    return report


class _OutputError:
    """Squared error of the model's output against fp32 on `patches` when the given tensors are
    quantized (QDQ pairs on the ranges given, read by every consumer), weights float."""

    def __init__(self, model, patches: np.ndarray, symmetric: bool, signed: bool, threads: int | None):
        from .evaluate import make_session

        self.model, self.patches, self.symmetric, self.signed, self.threads = model, patches, symmetric, signed, threads
        self.input = model.graph.input[0].name
        self.ref = self._run(make_session(model.SerializeToString(), threads))

    def _run(self, sess) -> np.ndarray:
        step = max(1, 8 * 48 * 48 // int(np.prod(self.patches.shape[2:])))
        return np.concatenate([sess.run(None, {self.input: self.patches[i:i + step]})[0]
                               for i in range(0, len(self.patches), step)]).astype(np.float64)

    def __call__(self, tensor_ranges: dict[str, tuple[float, float]]) -> float:
        import onnx
        from onnx import TensorProto, helper

        from ..export.graph import toposort
        from .evaluate import make_session

        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        zp_type = TensorProto.INT8 if self.signed else TensorProto.UINT8
        for i, (t, (lo, hi)) in enumerate(tensor_ranges.items()):
            scale, zp, _, _ = qparams(lo, hi, self.symmetric, self.signed)
            s_name, z_name, q, dq = (f"__range_search_{i}_{x}" for x in ("scale", "zp", "q", "dq"))
            m.graph.initializer.extend([helper.make_tensor(s_name, TensorProto.FLOAT, [], [scale]),
                                        helper.make_tensor(z_name, zp_type, [], [zp])])
            for n in m.graph.node:
                n.input[:] = [dq if x == t else x for x in n.input]
            m.graph.node.extend([helper.make_node("QuantizeLinear", [t, s_name, z_name], [q]),
                                 helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq])])
        toposort(m)  # the QDQ pairs were appended after their readers
        y = self._run(make_session(m.SerializeToString(), self.threads))
        return float(np.sum((y - self.ref) ** 2))


def _conv(e, w, attrs):
    import torch.nn.functional as F

    p = attrs["pads"] or [0, 0, 0, 0]
    e = F.pad(e, (p[1], p[3], p[0], p[2])) if any(p) else e
    return F.conv2d(e, w, stride=attrs["strides"], dilation=attrs["dilations"], groups=attrs["group"])
