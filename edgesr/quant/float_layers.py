"""Keep a float layer float when ONNX Runtime runs the QDQ graph.

ONNX Runtime's graph optimizer (``WeightBiasQuantization``, basic level, ORT >= 1.20) quantizes
the float weights of every Conv / ConvTranspose / Gemm whose input comes from a
``DequantizeLinear`` with a per-tensor (scalar) scale: symmetric **per-tensor 8-bit** weights,
nearest rounding, int32 bias, so that it can fuse a ``QLinearConv``. In an edgesr mixed-precision
graph that is exactly a layer the search kept float next to an int8 one: the layer ran in int8
anyway, with coarser weights than any int8 layer edgesr makes (per-channel, 7-bit in ``cpu``,
GPTQ + bias correction) and, without VNNI, with the saturating 8-bit products ``reduce_range``
exists to avoid. Measured on ETDS-T x4 (``cpu``): keeping ``backbone_convs.2`` float cost 0.99 dB
held-out instead of 0.12 (all-int8), with ORT's optimizations off it scored 0.10 (docs/int8.md,
"Why a float layer made the cpu graph worse").

:func:`keep_float_layers_float` gives each such node its own ``DequantizeLinear`` with the SAME
scale and zero point written per channel (a 1-D tensor along axis 1): numerically identical, and
not the scalar scale the optimizer's pattern requires. :func:`requantized_float_nodes` checks the
graph ORT actually runs; it is how the fix is verified, on every candidate the quantizer builds.

:func:`float_consumers_read_float` (the ``openvino`` profile): every op that is not an int8 compute
node reads the float tensor instead of its Q/DQ copy, so OpenVINO does not dequantize it again per
float consumer and the float op computes on the values it had in fp32.
"""

from __future__ import annotations

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm")


def _input_channels(node, weight: np.ndarray) -> int | None:
    """The size of axis 1 of `node`'s data input, from its weight (None: unknown)."""
    if node.op_type == "Conv" and weight.ndim >= 3:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return int(weight.shape[1] * group)
    if node.op_type == "ConvTranspose" and weight.ndim >= 3:
        return int(weight.shape[0])
    if node.op_type == "Gemm" and weight.ndim == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return int(weight.shape[1] if trans_b else weight.shape[0])
    return None


def keep_float_layers_float(model) -> list[str]:
    """Rewrite `model` (a QDQ ModelProto, in place) so that ONNX Runtime leaves its float
    Conv/ConvTranspose/Gemm nodes float. Returns the names of the nodes given a per-channel
    ``DequantizeLinear`` (nodes with a one-channel input cannot be helped this way: they stay
    as they are, and :func:`requantized_float_nodes` reports them)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    changed: list[str] = []
    new_nodes: list[tuple[int, object]] = []
    for idx, node in enumerate(model.graph.node):
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue  # an int8 node's weight comes from a DequantizeLinear, not an initializer
        w = inits[node.input[1]]
        if w.data_type != 1:  # FLOAT: the only weight type the optimizer quantizes
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        if scale.size != 1:
            continue  # already per channel
        c = _input_channels(node, numpy_helper.to_array(w))
        if c is None or c < 2:
            continue
        zp_name = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
        base = f"{node.name}__float_input"
        s_init = numpy_helper.from_array(np.full(c, scale.reshape(-1)[0], dtype=scale.dtype), base + "_scale")
        model.graph.initializer.append(s_init)
        inputs = [dq.input[0], s_init.name]
        if zp_name is not None:
            zp = numpy_helper.to_array(inits[zp_name])
            z_init = numpy_helper.from_array(np.full(c, zp.reshape(-1)[0], dtype=zp.dtype), base + "_zero_point")
            model.graph.initializer.append(z_init)
            inputs.append(z_init.name)
        out = base + "_dq"
        new_nodes.append((idx, helper.make_node("DequantizeLinear", inputs, [out], name=base + "_DequantizeLinear",
                                                axis=1)))
        node.input[0] = out
        changed.append(node.name)
    for offset, (idx, n) in enumerate(new_nodes):
        model.graph.node.insert(idx + offset, n)
    return changed


def requantized_float_nodes(model_bytes: bytes) -> list[str]:
    """Names of nodes whose float weight ONNX Runtime's optimizer turned into int8 (the nodes of
    the graph it runs at its basic level whose weight comes from a DequantizeLinear it added)."""
    import onnx

    from ..backends.ort_session import ort_session

    src = onnx.load_from_string(model_bytes)
    inits = {i.name for i in src.graph.initializer}
    floats = {n.name for n in src.graph.node
              if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits}
    if not floats:
        return []
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="edgesr-ortopt-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        ort_session(model_bytes, threads=1, graph_opt="basic", optimized_model_path=path)
        opt = onnx.load(str(path))
    producer = {o: n for n in opt.graph.node for o in n.output}
    hit = []
    for n in opt.graph.node:
        if n.name in floats and len(n.input) > 1:
            p = producer.get(n.input[1])
            if p is not None and p.op_type == "DequantizeLinear":
                hit.append(n.name)
    return sorted(hit)


def float_consumers_read_float(model) -> list[str]:
    """Rewire (in place) every op of a QDQ `model` that reads an activation's int8 copy but is not an
    int8 compute node (a float conv, an Add, a Sigmoid, a Tile ...) to the float tensor the copy was
    made from; a Q/DQ pair left without consumers is removed. Returns the rewired nodes' names.

    ONNX Runtime's quantizer hands a quantized tensor's DequantizeLinear output to every consumer. In
    OpenVINO an int8 conv reads the int8 codes directly, while each float consumer makes it dequantize
    the tensor again as its own pass (a zero-point Subtract and a scale Multiply over the full-size
    tensor: ~10 ms of SPAN's 120 at 180x320, docs/int8.md "OpenVINO findings"); and the float consumer
    computed on rounded values it did not need to."""
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}

    def int8_compute(node) -> bool:
        w = producer.get(node.input[1]) if node.op_type in WEIGHTED_OPS + ("MatMul",) and len(node.input) > 1 else None
        return w is not None and w.op_type == "DequantizeLinear"

    rewired: list[str] = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or int8_compute(node):
            continue
        for i, t in enumerate(node.input):
            dq = producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear" or t in outputs:
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
                continue  # a weight, or an int8 tensor with no float original in the graph
            node.input[i] = q.input[0]
            rewired.append(node.name)
    used = {t for n in model.graph.node for t in n.input} | outputs
    while True:  # drop DequantizeLinear nodes nobody reads, then their QuantizeLinear
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and n.output[0] not in used]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
        used = {t for n in model.graph.node for t in n.input} | outputs
    return rewired
