"""PReLU rewrites for int8 CPU graphs: bit-exact decomposition, and Relu on doubled channels.

``decompose_prelu``: ``PRelu(x, a) -> Relu(x) + a * (x - Relu(x))`` (Relu, Sub, Mul, Add).
Bit-exact in float (for x >= 0: r + a*0 = x; for x < 0: 0 + a*x), and ONNX Runtime's CPU
PRelu kernel is slow (34% of ECBSR-M4C16's fp32 time at 180x320, single thread): four
plain elementwise ops are faster. The decomposition nodes are named ``...__prelu_*`` and
kept in float by the quantizer (they sit between a DequantizeLinear and a QuantizeLinear,
exactly where the PRelu was).

``split_prelu`` (below):

ONNX Runtime has no int8 PRelu kernel: in a QDQ graph every PRelu runs in float between a
DequantizeLinear and a QuantizeLinear. With per-channel slopes ``a``
``PReLU(z) = relu(z) - a * relu(-z)``, so for ``Conv A -> PRelu -> Conv B``:

* A' outputs ``[z, -z]`` (weights ``[W_A; -W_A]``, bias ``[b_A; -b_A]``), followed by Relu;
* B' reads both halves: weights ``[W_B, -a * W_B]`` (input channel ``c`` of the second
  half scaled by ``-a_c``).

The result is a Conv+Relu chain that ORT fuses into QLinearConv, at the price of twice
the channels between A and B (A's output and B's input). Whether that pays off is
measured (docs/int8.md); the rewrite is checked for equivalence on real inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class PreluReport:
    rewritten: list[str] = field(default_factory=list)  # PRelu node names
    max_abs_change: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


DECOMPOSED_TAG = "__prelu_"


def decompose_prelu(model, check_input: np.ndarray | None = None):
    """Return (copy with every PRelu decomposed, PreluReport); see the module docstring."""
    import onnx
    from onnx import helper, numpy_helper

    src = model
    model = onnx.ModelProto()
    model.CopyFrom(src)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    report = PreluReport()
    nodes = []
    for n in g.node:
        if n.op_type != "PRelu" or n.input[1] not in inits:
            nodes.append(n)
            continue
        x, y = n.input[0], n.output[0]
        slope = numpy_helper.to_array(inits[n.input[1]])  # PRelu and Mul both broadcast from the right
        t = (n.name or y).replace("/", "_") + DECOMPOSED_TAG
        a = t + "slope"
        g.initializer.append(numpy_helper.from_array(slope.astype(np.float32), a))
        nodes += [helper.make_node("Relu", [x], [t + "pos"], name=t + "relu"),
                  helper.make_node("Sub", [x, t + "pos"], [t + "neg"], name=t + "sub"),
                  helper.make_node("Mul", [t + "neg", a], [t + "scaled"], name=t + "mul"),
                  helper.make_node("Add", [t + "pos", t + "scaled"], [y], name=t + "add")]
        report.rewritten.append(n.name)
    del g.node[:]
    g.node.extend(nodes)
    used = {t for n in g.node for t in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    if check_input is not None and report.rewritten:
        from .evaluate import make_session

        name = g.input[0].name
        y0 = make_session(src.SerializeToString()).run(None, {name: check_input})[0]
        y1 = make_session(model.SerializeToString()).run(None, {name: check_input})[0]
        report.max_abs_change = float(np.abs(y0 - y1).max())
    return model, report


def split_prelu(model, check_input: np.ndarray | None = None):
    """Return (rewritten copy, PreluReport). Only Conv -> PRelu -> Conv chains with
    initializer weights used once and a per-channel (or scalar) slope are rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    src = model
    model = onnx.ModelProto()
    model.CopyFrom(src)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    uses: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
            uses[t] = uses.get(t, 0) + 1
    outputs = {o.name for o in g.output}
    report = PreluReport()

    def conv_ok(n) -> bool:
        if n is None or n.op_type != "Conv" or n.input[1] not in inits or uses.get(n.input[1]) != 1:
            return False
        if len(n.input) > 2 and n.input[2] and (n.input[2] not in inits or uses.get(n.input[2]) != 1):
            return False
        return all(not (a.name == "group" and a.i != 1) for a in n.attribute)

    for p in list(g.node):
        if p.op_type != "PRelu" or p.input[1] not in inits:
            continue
        a_node = producer.get(p.input[0])
        cons = consumers.get(p.output[0], [])
        if (a_node is None or not conv_ok(a_node) or len(consumers.get(a_node.output[0], [])) != 1 or len(cons) != 1
                or not conv_ok(cons[0]) or p.output[0] in outputs or a_node.output[0] in outputs):
            continue
        b_node = cons[0]
        wa = numpy_helper.to_array(inits[a_node.input[1]])
        c = wa.shape[0]
        slope = numpy_helper.to_array(inits[p.input[1]]).astype(np.float64)
        if slope.size not in (1, c):
            continue
        slope = np.broadcast_to(slope.reshape(-1), (c,))
        wb = numpy_helper.to_array(inits[b_node.input[1]])
        if wb.shape[1] != c:
            continue
        inits[a_node.input[1]].CopyFrom(numpy_helper.from_array(np.concatenate([wa, -wa]).astype(wa.dtype),
                                                                a_node.input[1]))
        if len(a_node.input) > 2 and a_node.input[2]:
            ba = numpy_helper.to_array(inits[a_node.input[2]])
            inits[a_node.input[2]].CopyFrom(numpy_helper.from_array(np.concatenate([ba, -ba]).astype(ba.dtype),
                                                                    a_node.input[2]))
        neg = -slope.reshape(1, c, *([1] * (wb.ndim - 2))) * wb.astype(np.float64)
        inits[b_node.input[1]].CopyFrom(numpy_helper.from_array(
            np.concatenate([wb, neg.astype(wb.dtype)], axis=1), b_node.input[1]))
        relu = helper.make_node("Relu", [p.input[0]], [p.output[0]], name=p.name)
        idx = list(g.node).index(p)
        g.node.remove(p)
        g.node.insert(idx, relu)
        report.rewritten.append(p.name)
    # drop now-unused slope initializers
    used = {t for n in g.node for t in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    # shapes changed: clear stale value_info
    del g.value_info[:]
    if check_input is not None and report.rewritten:
        from .evaluate import make_session

        name = g.input[0].name
        y0 = make_session(src.SerializeToString()).run(None, {name: check_input})[0]
        y1 = make_session(model.SerializeToString()).run(None, {name: check_input})[0]
        report.max_abs_change = float(np.abs(y0 - y1).max())
    return model, report
