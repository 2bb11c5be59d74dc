"""Exact zero-centring of conv inputs, for symmetric (zero point 0) int8 activations.

TensorRT's int8 is symmetric: a tensor in [0, R] (a Relu output, or an image in [0, 1])
is quantized on [-R, R], so half of the 255 levels are never used. Shifting the tensor by
``c = (lo + hi) / 2`` before it is quantized halves the step. The shift is undone exactly:

* ``Conv A -> Relu -> Conv B``: A's bias is lowered by ``c`` and the Relu becomes
  ``Clip(min=-c)`` (``max(z, 0) - c == max(z - c, -c)``); other activations (PRelu) or
  the graph input get an explicit ``Sub c``;
* ``Conv B`` sees ``x' = x - c``. Its zero padding would now mean ``x = c`` at the border,
  so the padding moves into an explicit ``Pad`` with value ``-c`` and B's own pads become
  0; B's bias gains ``c * sum(W_B)`` per output channel.

Only convs with group 1, stride 1, dilation 1, explicit pads and a single consumer chain
are rewritten; the function is checked on the calibration batch by the caller.

The picture itself (``levels``: the graph input is an 8-bit picture, ``lo + k * step``) is
centred at level 128, not at its calibrated range middle: the conv then reads ``(k - 128) * step``,
which int8 with scale ``step`` and zero point 0 holds exactly (codes -128..127 are the pixels);
the caller sets that scale (:func:`exact_input_overrides`). A calibrated scale would re-quantize
the 256 grey levels on a grid of its own and merge some of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .profiles import COMPUTE_OPS


@dataclass
class CenteredInput:
    conv: str
    tensor: str
    shift: float
    lo: float
    hi: float
    how: str  # "relu->clip" | "sub"
    conv_input: str = ""  # the tensor the conv reads after the rewrite (what gets quantized)
    exact_step: float | None = None  # the picture's level step: int8 with this scale is exact


@dataclass
class CenterReport:
    inputs: list[CenteredInput] = field(default_factory=list)
    max_abs_change: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default


def _centerable_conv(n, inits) -> bool:
    if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
        return False
    if _attr(n, "group", 1) != 1 or list(_attr(n, "strides", [1, 1])) != [1, 1]:
        return False
    if list(_attr(n, "dilations", [1, 1])) != [1, 1]:
        return False
    ap = _attr(n, "auto_pad", b"NOTSET")
    if (ap.decode() if isinstance(ap, bytes) else ap) != "NOTSET":
        return False
    return len(n.input) < 3 or not n.input[2] or n.input[2] in inits


def center_conv_inputs(model, batch: np.ndarray, *, threads: int | None = None, min_gain: float = 1.25,
                       grids: dict | None = None):
    """Return (rewritten copy of `model`, CenterReport).

    A conv input is centred when symmetric quantization of its calibrated range [lo, hi]
    would waste range: ``max(|lo|, |hi|) / ((hi - lo) / 2) >= min_gain``. `grids`
    (:func:`picture_grids`): tensors that hold the 8-bit picture's levels; a conv reading one is
    always centred, at level 128 (see the module docstring).
    """
    import onnx
    from onnx import helper, numpy_helper

    from .evaluate import make_session, tensors_over_batches

    src = model
    model = onnx.ModelProto()
    model.CopyFrom(src)
    report = CenterReport()
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    graph_in = g.input[0].name
    outputs = {o.name for o in g.output}

    cands = [n for n in g.node if _centerable_conv(n, inits) and n.input[0] not in outputs]
    if not cands:
        return model, report
    tensors = sorted({n.input[0] for n in cands})
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    for values in tensors_over_batches(src, tensors, batch, threads, graph_in):
        for t, v in zip(tensors, values):
            lo[t] = min(lo[t], float(v.min()))
            hi[t] = max(hi[t], float(v.max()))

    new_nodes_before: dict[str, list] = {}  # node name -> nodes to insert before it
    shared_sub: dict[str, str] = {}  # tensor -> its centred copy (a graph input read by several convs)
    for b in cands:
        t = b.input[0]
        cons = consumers.get(t, [])
        if len(cons) != 1 and t != graph_in and t not in (grids or {}):
            continue
        if len(b.input) > 2 and b.input[2] and not _single_use(g, b.input[2]):
            continue
        l, h = lo[t], hi[t]
        half = (h - l) / 2.0
        levels = (grids or {}).get(t)
        if levels is not None:
            c = float(np.float32(levels.lo + 128 * levels.step))
        elif not (half > 0) or max(abs(l), abs(h)) / half < min_gain:
            continue
        else:
            c = float(np.float32((h + l) / 2.0))
        p = producer.get(t)
        pads = list(_attr(b, "pads", [0, 0, 0, 0]))
        tag = b.name.strip("/").replace("/", "_") or b.output[0]
        shifted = f"{t}__centered"
        inserted = []
        # 1. produce x' = x - c
        a = producer.get(p.input[0]) if p is not None and p.op_type == "Relu" else None
        if (p is not None and p.op_type == "Relu" and a is not None and a.op_type == "Conv"
                and len(consumers.get(a.output[0], [])) == 1 and len(consumers.get(t, [])) == 1
                and len(a.input) > 2 and a.input[2] in inits and _single_use(g, a.input[2])):
            bias = numpy_helper.to_array(inits[a.input[2]]).astype(np.float64) - c
            inits[a.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), a.input[2]))
            cmin = f"{tag}__clip_min"
            g.initializer.append(numpy_helper.from_array(np.array(-c, dtype=np.float32), cmin))
            p.op_type = "Clip"
            del p.input[:]
            p.input.extend([a.output[0], cmin])
            p.output[0] = shifted
            how = "relu->clip"
        elif t in shared_sub:
            shifted = shared_sub[t]
            how = "sub (shared)"
        else:
            cname = f"{tag}__shift"
            g.initializer.append(numpy_helper.from_array(np.array(c, dtype=np.float32), cname))
            inserted.append(helper.make_node("Sub", [t, cname], [shifted], name=f"{tag}__center_sub"))
            shared_sub[t] = shifted
            how = "sub"
        # 2. explicit padding with -c, conv pads -> 0
        conv_in = shifted
        if any(pads):
            n_half = len(pads) // 2
            pad_vec = [0, 0] + pads[:n_half] + [0, 0] + pads[n_half:]
            pname, vname = f"{tag}__pads", f"{tag}__pad_value"
            g.initializer.append(numpy_helper.from_array(np.array(pad_vec, dtype=np.int64), pname))
            g.initializer.append(numpy_helper.from_array(np.array(-c, dtype=np.float32), vname))
            conv_in = f"{tag}__padded"
            inserted.append(helper.make_node("Pad", [shifted, pname, vname], [conv_in], mode="constant",
                                             name=f"{tag}__center_pad"))
            for at in b.attribute:
                if at.name == "pads":
                    del at.ints[:]
                    at.ints.extend([0] * len(pads))
        b.input[0] = conv_in
        # 3. bias of B += c * sum(W_B)
        w = numpy_helper.to_array(inits[b.input[1]]).astype(np.float64)
        delta = c * w.reshape(w.shape[0], -1).sum(1)
        if len(b.input) > 2 and b.input[2]:
            bias = numpy_helper.to_array(inits[b.input[2]]).astype(np.float64) + delta
            inits[b.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), b.input[2]))
        else:
            bname = f"{tag}__bias"
            g.initializer.append(numpy_helper.from_array(delta.astype(np.float32), bname))
            while len(b.input) < 3:
                b.input.append("")
            b.input[2] = bname
        new_nodes_before.setdefault(b.name, []).extend(inserted)
        report.inputs.append(CenteredInput(b.name, t, c, l, h, how, conv_in,
                                           float(levels.step) if levels is not None else None))
    if new_nodes_before:
        nodes = list(g.node)
        del g.node[:]
        for n in nodes:
            g.node.extend(new_nodes_before.get(n.name, []))
            g.node.append(n)
    x = batch[: min(4, len(batch))]
    y0 = make_session(src.SerializeToString(), threads).run(None, {graph_in: x})[0]
    y1 = make_session(model.SerializeToString(), threads).run(None, {graph_in: x})[0]
    report.max_abs_change = float(np.abs(y0 - y1).max())
    return model, report


def _single_use(g, name: str) -> bool:
    return sum(1 for n in g.node for t in n.input if t == name) == 1


# Ops that only move, copy or drop values of their first input (ECBSR's residual: the picture tiled to
# scale^2 channels): their output holds the same grid.
_MOVES_VALUES = ("Unsqueeze", "Squeeze", "Reshape", "Tile", "Expand", "Transpose", "Slice", "DepthToSpace",
                 "SpaceToDepth", "Identity", "Flatten")


def picture_grids(model, levels) -> dict:
    """Tensors that hold the picture's 256 levels: the graph input (`levels`, an
    :class:`~edgesr.quant.calibration.InputLevels`) and what a chain of single-input affine ops with a
    scalar constant makes of it (``x * 255``: RLFN, SPAN; ``x - 0.5``). A per-channel constant (a
    mean shift: SPAN's ``x - mean``) ends the chain: its channels sit on three different grids,
    which one per-tensor scale and zero point cannot hold."""
    from onnx import numpy_helper

    from .calibration import InputLevels

    if levels is None:
        return {}
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    grids = {model.graph.input[0].name: levels}
    for n in model.graph.node:  # topological order: a chain is followed in one pass
        if n.op_type in _MOVES_VALUES and n.input and n.input[0] in grids:  # same values, other places
            grids[n.output[0]] = grids[n.input[0]]
            continue
        if n.op_type not in ("Mul", "Div", "Add", "Sub") or len(n.input) != 2:
            continue
        src = [t for t in n.input if t in grids]
        other = [t for t in n.input if t not in grids]
        if len(src) != 1 or len(other) != 1 or other[0] not in consts or consts[other[0]].size != 1:
            continue
        g, v = grids[src[0]], float(consts[other[0]].reshape(()))
        if n.op_type in ("Mul", "Div"):
            a = v if n.op_type == "Mul" else (1.0 / v if v else 0.0)
            if not a > 0 or (n.op_type == "Div" and n.input[0] != src[0]):
                continue
            lo, step = g.lo * a, g.step * a
        else:
            if n.op_type == "Sub" and n.input[0] != src[0]:
                continue
            lo, step = g.lo + (v if n.op_type == "Add" else -v), g.step
        k0 = -lo / step
        if abs(k0 - round(k0)) > 1e-4 or not 0 <= round(k0) <= 255:  # zero padding must stay a level
            continue
        grids[n.output[0]] = InputLevels(lo, step, int(round(k0)))
    return grids


def exact_input_overrides(model, profile, grids: dict, report: CenterReport | None) -> tuple[dict[str, list], dict]:
    """ONNX Runtime ``TensorQuantOverrides`` that quantize the picture exactly, and what they cover.

    `grids` (:func:`picture_grids`): the tensors holding the picture's levels. Symmetric int8 profiles
    (``trt``): each conv input centred at level 128 by :func:`center_conv_inputs` gets scale ``step``,
    zero point 0 (codes = pixel - 128). uint8 profiles (``cpu``, ``openvino``): every grid tensor gets
    scale ``step`` and the zero point of 0.0 (codes = pixels). The second value says which tensors are
    exact and which ops read the picture some other way (they keep their calibrated scale)."""
    info: dict = {"exact": [], "not_exact": []}
    if not grids:
        info["not_exact"].append("the input is not an 8-bit RGB grid with 0 on it (one Y channel, or its "
                                 "value range puts 0 between two levels)")
        return {}, info
    overrides: dict[str, list] = {}
    if profile.activation_symmetric and profile.activation_type == "int8":
        for ci in (report.inputs if report is not None else []):
            if ci.exact_step is not None:
                overrides[ci.conv_input] = [{"scale": np.array(ci.exact_step, dtype=np.float32),
                                             "zero_point": np.array(0, dtype=np.int8)}]
                info["exact"].append(ci.conv)
        exact_convs = set(info["exact"])
        ok = lambda n: (n.name.endswith("__center_sub") or n.name in exact_convs  # noqa: E731
                        or n.output[0] in grids)
    elif not profile.activation_symmetric and profile.activation_type == "uint8":
        for t, g in grids.items():
            overrides[t] = [{"scale": np.array(g.step, dtype=np.float32),
                             "zero_point": np.array(g.zero_code, dtype=np.uint8)}]
        info["exact"] = [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in grids]
        # every grid tensor carries the exact scale: a quantized op reading one reads the pixels
        ok = lambda n: n.op_type in COMPUTE_OPS or n.output[0] in grids  # noqa: E731
    else:
        info["not_exact"].append(f"profile {profile.name}: no exact 8-bit scheme for {profile.activation_type} "
                                 f"{'symmetric' if profile.activation_symmetric else 'asymmetric'} activations")
        return {}, info
    for n in model.graph.node:
        if any(t in grids for t in n.input) and not ok(n) and n.op_type not in ("Shape", "Size"):  # (reads no value)
            info["not_exact"].append(f"{n.name} ({n.op_type}) reads the picture")
    return overrides, info
