"""Exact split of ``Conv(Concat(x_1, ..., x_k))`` into ``Conv_1(x_1) + ... + Conv_k(x_k)``.

INT8 activations get one scale per tensor. A conv that reads a channel concatenation of
tensors with very different ranges (SPAN's ``conv_cat``: the first conv's features next to
attention-weighted block outputs; RLFN-style feature fusions) quantizes the narrow parts in a
few levels - SPAN ch28 x4 loses 0.47 dB on that one layer. Splitting the weight along its
input channels gives each part its own conv and so its own input scale; the partial outputs
are summed in float (the ``Add`` nodes carry :data:`SPLIT_TAG` and are kept float by the
quantizer, so no new rounding enters). Exact up to float summation order; checked by the
caller on the calibration batch.

Only group-1 convs with initializer weights used once, whose input is a Concat on the channel
axis read by that conv alone, are rewritten, and only when the parts' ranges differ by at
least ``min_ratio`` (otherwise one scale serves them all and the split only costs time).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

SPLIT_TAG = "__concat_split_"


@dataclass
class ConcatSplitReport:
    convs: list[dict] = field(default_factory=list)  # {"conv", "parts", "range_ratio"}
    max_abs_change: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def split_concat_convs(model, batch: np.ndarray, *, threads: int | None = None, min_ratio: float = 2.0):
    """Return (rewritten copy of `model`, ConcatSplitReport)."""
    import onnx
    from onnx import helper, numpy_helper

    from .evaluate import make_session, tensors_over_batches

    src = model
    model = onnx.ModelProto()
    model.CopyFrom(src)
    g = model.graph
    report = ConcatSplitReport()
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1

    def attr(n, name, default):
        for a in n.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    cands = []
    for n in g.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits or uses.get(n.input[1]) != 1:
            continue
        if attr(n, "group", 1) != 1:
            continue
        cat = producer.get(n.input[0])
        if cat is None or cat.op_type != "Concat" or uses.get(n.input[0]) != 1 or len(cat.input) < 2:
            continue
        if attr(cat, "axis", 1) not in (1, -3):
            continue
        cands.append((n, cat))
    if not cands:
        return model, report

    # ranges of the concatenated parts (max |x| per part) on the calibration batch
    parts = sorted({t for _, cat in cands for t in cat.input})
    inp = g.input[0].name
    peak = {t: 0.0 for t in parts}
    chans: dict[str, int] = {}
    for values in tensors_over_batches(src, parts, batch, threads, inp):
        for t, v in zip(parts, values):
            peak[t] = max(peak[t], float(np.abs(v).max()))
            chans[t] = v.shape[1]

    new_nodes: dict[str, list] = {}
    drop: set[str] = set()
    for conv, cat in cands:
        p = [peak[t] for t in cat.input]
        live = [x for x in p if x > 0]
        ratio = max(live) / min(live) if len(live) > 1 else 1.0
        if ratio < min_ratio:
            continue
        w = numpy_helper.to_array(inits[conv.input[1]])
        if w.shape[1] != sum(chans[t] for t in cat.input):
            continue
        tag = (conv.name or conv.output[0]).strip("/").replace("/", "_") + SPLIT_TAG
        nodes, start, partial = [], 0, []
        for k, t in enumerate(cat.input):
            c = chans[t]
            wname = f"{tag}w{k}"
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[:, start:start + c]), wname))
            start += c
            ins = [t, wname] + ([conv.input[2]] if k == 0 and len(conv.input) > 2 and conv.input[2] else [])
            out = f"{tag}part{k}"
            nodes.append(helper.make_node("Conv", ins, [out], name=f"{conv.name}_part{k}",
                                          **{a.name: helper.get_attribute_value(a) for a in conv.attribute}))
            partial.append(out)
        acc = partial[0]
        for k in range(1, len(partial)):
            out = conv.output[0] if k == len(partial) - 1 else f"{tag}sum{k}"
            nodes.append(helper.make_node("Add", [acc, partial[k]], [out], name=f"{tag}add{k}"))
            acc = out
        new_nodes[conv.name] = nodes
        drop |= {conv.name, cat.name}
        report.convs.append({"conv": conv.name, "parts": len(partial), "range_ratio": round(ratio, 2)})
    if not report.convs:
        return model, report
    kept = []
    for n in g.node:
        if n.name in new_nodes:
            kept.extend(new_nodes[n.name])
        elif n.name not in drop:
            kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    used = {t for n in g.node for t in n.input}
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    del g.value_info[:]
    x = batch[: min(4, len(batch))]
    y0 = make_session(src.SerializeToString(), threads).run(None, {inp: x})[0]
    y1 = make_session(model.SerializeToString(), threads).run(None, {inp: x})[0]
    report.max_abs_change = float(np.abs(y0 - y1).max())
    return model, report
