"""Activation ranges clipped where a saturating activation stops changing its output.

With ONNX Runtime's placement (``cpu`` profile) the input of a Tanh / Sigmoid - a conv output -
is quantized on one uint8 range per tensor. A single channel driven deep into saturation sets
that range: ESPCN x2's first conv reaches 535 before its Tanh while the other channels stay
within +-4, so every other channel was quantized in steps of 2.1 and the all-int8 graph lost
21 dB. Beyond ``T`` where ``|f(T) - f(inf)|`` is below half an output quantization step, the
activation's quantized output no longer changes, so clipping its input range to ``[-T, T]`` loses
nothing the output Q keeps, and gives the unsaturated channels the resolution they need.
"""

from __future__ import annotations

import math

import numpy as np

# output span of each activation: the output's 8-bit step is span / 255
SATURATING = {"Tanh": 2.0, "Sigmoid": 1.0}


def saturation_bound(op_type: str, levels: int = 255) -> float:
    """|x| beyond which `op_type`'s output moves by less than half an 8-bit output step."""
    half_step = SATURATING[op_type] / levels / 2
    if op_type == "Tanh":  # 1 - tanh(T) = half_step
        return math.atanh(1.0 - half_step)
    return math.log((1.0 - half_step) / half_step)  # Sigmoid: 1 - s(T) = half_step


def clip_saturating_ranges(model, ranges) -> dict[str, tuple[float, float]]:
    """Clip, in `ranges` (ORT TensorsData, in place), the calibrated range of every tensor read
    only by Tanh / Sigmoid nodes to their saturation bound. Returns {tensor: (old_lo, old_hi)} of
    the ranges changed."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    outputs = {o.name for o in model.graph.output}
    changed = {}
    for name, users in consumers.items():
        if name in outputs or name not in ranges or not users:
            continue
        ops = {u.op_type for u in users}
        if not ops <= set(SATURATING):
            continue
        bound = min(saturation_bound(op) for op in ops)
        td = ranges[name]
        try:
            lo, hi = td.range_value
        except AttributeError:
            continue
        lo_v, hi_v = float(np.min(lo)), float(np.max(hi))
        if lo_v >= -bound and hi_v <= bound:
            continue
        td.lowest = np.asarray(max(lo_v, -bound), dtype=np.asarray(lo).dtype).reshape(np.shape(lo))
        td.highest = np.asarray(min(hi_v, bound), dtype=np.asarray(hi).dtype).reshape(np.shape(hi))
        changed[name] = (lo_v, hi_v)
    return changed
