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
