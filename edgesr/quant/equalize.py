"""Exact per-channel activation-range equalization of an fp32 ONNX graph.

INT8 activations get one scale per tensor (TensorRT and ONNX Runtime quantize activations
per tensor). When the channels of a tensor have very different ranges, the narrow ones
keep only a few of the 255 levels. In ETDS's deploy form that is fatal: the residual
stream (a few channels carrying the input picture, values ~[0, 1]) shares each tensor
with backbone features that reach 4-25, so the picture itself is quantized in steps of
~10 grey levels.

For a chain ``Conv A -> f -> Conv B`` with ``f`` positively homogeneous per channel
(Relu, PRelu, LeakyRelu, or nothing: ``f(s*x) = s*f(x)`` for ``s > 0``), multiplying
output channel ``c`` of A (weight row and bias) by ``s_c`` and dividing input channel
``c`` of B's weight by ``s_c`` leaves the network's function unchanged (up to float
rounding), but rescales the activation tensor per channel. With
``s_c = (R / r_c) ** alpha`` (``r_c`` the channel's calibrated range, ``R`` the largest)
every channel spans (for alpha = 1) the full range of the tensor. Weights of A are
quantized per output channel, so scaling its rows costs nothing; B's columns shrink by
``1/s_c``, which is why ``alpha`` < 1 can be a better trade-off (it is measured, see
docs/int8.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HOMOGENEOUS = ("Relu", "PRelu", "LeakyRelu")


@dataclass
class EqualizedPair:
    producer: str  # Conv node whose output channels were scaled
    consumer: str  # Conv node whose input channels were compensated
    tensor: str  # the activation tensor whose channel ranges changed
    scale_min: float
    scale_max: float
    range_ratio_before: float  # max channel range / min channel range (ignoring dead channels)
    range_ratio_after: float


@dataclass
class EqualizationReport:
    alpha: float
    pairs: list[EqualizedPair] = field(default_factory=list)
    max_abs_change: float | None = None  # |fp32 equalized - fp32 original| on the calibration batch

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def find_pairs(model) -> list[tuple]:
    """(conv_a, act_or_None, conv_b) chains that can be equalized exactly."""
    nodes = list(model.graph.node)
    inits = {i.name for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    weight_uses: dict[str, int] = {}
    for n in nodes:
        for t in n.input:
            if t in inits:
                weight_uses[t] = weight_uses.get(t, 0) + 1

    def plain_conv(n) -> bool:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits or weight_uses[n.input[1]] != 1:
            return False
        if len(n.input) > 2 and n.input[2] and (n.input[2] not in inits or weight_uses[n.input[2]] != 1):
            return False
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        return group == 1

    pairs = []
    for a in nodes:
        if not plain_conv(a):
            continue
        out = a.output[0]
        if out in graph_outputs or len(consumers.get(out, [])) != 1:
            continue
        nxt = consumers[out][0]
        act = None
        if nxt.op_type in HOMOGENEOUS:
            if nxt.op_type == "PRelu" and nxt.input[1] not in inits:
                continue
            act = nxt
            t = act.output[0]
            if t in graph_outputs or len(consumers.get(t, [])) != 1:
                continue
            nxt = consumers[t][0]
        if plain_conv(nxt) and nxt.input[0] == (act.output[0] if act is not None else out):
            pairs.append((a, act, nxt))
    return pairs


def channel_ranges(model, tensors: list[str], batch: np.ndarray, input_name: str, symmetric: bool,
                   threads: int | None = None) -> dict[str, np.ndarray]:
    """Per-channel range of each tensor over `batch`: max|x| (symmetric) or max - min."""
    from .evaluate import tensors_over_batches

    hi: dict[str, np.ndarray] = {}
    lo: dict[str, np.ndarray] = {}
    for outs in tensors_over_batches(model, tensors, batch, threads, input_name):
        for t, v in zip(tensors, outs):
            mx, mn = v.max(axis=(0, 2, 3)), v.min(axis=(0, 2, 3))
            hi[t] = mx if t not in hi else np.maximum(hi[t], mx)
            lo[t] = mn if t not in lo else np.minimum(lo[t], mn)
    return {t: (np.maximum(np.abs(hi[t]), np.abs(lo[t])) if symmetric else hi[t] - np.minimum(lo[t], 0.0)).astype(np.float64)
            for t in tensors}


def equalize(model, batch: np.ndarray, *, alpha: float = 1.0, symmetric: bool = True, max_scale: float = 64.0,
             threads: int | None = None, pre_activation: bool = False):
    """Return (equalized copy of `model`, EqualizationReport). `batch`: NCHW calibration inputs.

    pre_activation: equalize the ranges of a PRelu / LeakyRelu's INPUT (the conv output) instead of
    its output. With ONNX Runtime's placement (``cpu``) the conv output is quantized before the
    activation, and its negative tail - 1/slope times what the activation passes on - sets that
    tensor's range: FSRCNN x2's first conv reaches -94 with +8.7 on the positive side."""
    import onnx
    from onnx import numpy_helper

    from .evaluate import make_session

    model_in = model
    model = onnx.ModelProto()
    model.CopyFrom(model_in)
    report = EqualizationReport(alpha=float(alpha))
    pairs = find_pairs(model)
    if not pairs or alpha <= 0:
        return model, report
    input_name = model.graph.input[0].name
    tensors = [(act.output[0] if act is not None and not (pre_activation and act.op_type != "Relu") else a.output[0])
               for a, act, _ in pairs]
    ranges = channel_ranges(model, tensors, batch, input_name, symmetric, threads)
    inits = {i.name: i for i in model.graph.initializer}
    arrays = {k: numpy_helper.to_array(v).astype(np.float64) for k, v in inits.items()}
    for (a, _act, b), t in zip(pairs, tensors):
        r = ranges[t]
        big = float(r.max())
        if big <= 0:
            continue
        live = r > big * 1e-3  # dead / near-constant-zero channels: leave them alone
        s = np.ones_like(r)
        s[live] = (big / r[live]) ** alpha
        s = np.clip(s, 1.0 / max_scale, max_scale)
        wa = arrays[a.input[1]]
        arrays[a.input[1]] = wa * s.reshape(-1, *([1] * (wa.ndim - 1)))
        if len(a.input) > 2 and a.input[2]:
            arrays[a.input[2]] = arrays[a.input[2]] * s
        wb = arrays[b.input[1]]
        arrays[b.input[1]] = wb / s.reshape(1, -1, *([1] * (wb.ndim - 2)))
        after = r * s
        report.pairs.append(EqualizedPair(
            producer=a.name, consumer=b.name, tensor=t, scale_min=float(s.min()), scale_max=float(s.max()),
            range_ratio_before=float(big / r[live].min()) if live.any() else 1.0,
            range_ratio_after=float(after.max() / after[live].min()) if live.any() else 1.0))
    for k, v in arrays.items():
        if any(k == a.input[1] or (len(a.input) > 2 and k == a.input[2]) or k == b.input[1] for a, _, b in pairs):
            inits[k].CopyFrom(numpy_helper.from_array(v.astype(numpy_helper.to_array(inits[k]).dtype), k))
    # exactness check on the calibration batch
    x = batch[: min(4, len(batch))]
    y0 = make_session(model_in.SerializeToString(), threads).run(None, {input_name: x})[0]
    y1 = make_session(model.SerializeToString(), threads).run(None, {input_name: x})[0]
    report.max_abs_change = float(np.abs(y0 - y1).max())
    return model, report
