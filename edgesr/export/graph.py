"""Graph helpers shared by the fp16 overflow scan and parity's first-divergence search:
expose intermediate tensors as extra outputs on a COPY of a model and run it with ORT."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from ..errors import ExportError

if TYPE_CHECKING:
    import onnx

# ONNX TensorProto element types that hold floating-point activations.
FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64, 16: None}  # 16 = bfloat16


def load(model) -> onnx.ModelProto:
    """A ModelProto from a path, bytes or ModelProto (the latter copied)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_model_from_string(bytes(model))
    p = Path(model)
    if p.suffix.lower() == ".ort":
        raise ExportError(f"{p.name} is in ORT format; intermediate tensors need the .onnx it came from")
    try:
        return onnx.load_model(str(p))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"cannot read ONNX model {p}: {str(e).splitlines()[0][:200] if str(e) else e}") from None


def tensor_types(model) -> dict[str, int]:
    """Element type of every named value (graph inputs, outputs, inferred intermediates)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - fall back to what the file declares
        inferred = model
    g = inferred.graph
    types = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def static_dims(model) -> dict[str, tuple[int | None, ...]]:
    """Inferred shape of every named value (None for symbolic / unknown dims)."""
    import onnx

    try:
        g = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001
        g = model.graph
    out = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return out


def producers(model) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output if out}


def activation_names(model, types: dict[str, int] | None = None) -> list[str]:
    """Float node outputs in topological (file) order, constants and initializers excluded."""
    types = tensor_types(model) if types is None else types
    inits = {i.name for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            continue
        for out in node.output:
            if out and out not in inits and types.get(out) in FLOAT_TYPES:
                names.append(out)
    return names


def expose(model, names: Sequence[str], types: dict[str, int] | None = None):
    """Copy of `model` whose graph also outputs `names` (existing outputs kept first)."""
    import onnx

    types = tensor_types(model) if types is None else types
    m = load(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            if n not in types:
                raise ExportError(f"tensor {n!r} has no known type; cannot expose it")
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, types[n], None))
            have.add(n)
    return m


def session(model, threads: int | None = 1, graph_opt: str = "basic"):
    """ORT CPU session. Default "basic": extended/all levels fuse QDQ patterns into integer
    kernels, and a fused model's exposed intermediate (e.g. a DequantizeLinear output) does
    not reliably hold the value the unfused graph defines (seen with ORT 1.32)."""
    from ..backends.ort_session import ort_session

    try:
        return ort_session(model, threads=threads, graph_opt=graph_opt)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0][:300]}") from None


def feed(sess, x: np.ndarray) -> dict[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    return {inp.name: np.ascontiguousarray(x, dtype=dtype)}


def run_tensors(model, names: Sequence[str], inputs: Iterable[np.ndarray], types=None,
                threads: int | None = 1, graph_opt: str = "basic") -> list[dict[str, np.ndarray]]:
    """Values of `names` (as float32) for each input, from one session of an exposed copy."""
    from ..backends.ort_runner import run_session

    sess = session(expose(model, names, types), threads, graph_opt)
    out = []
    for x in inputs:
        vals = run_session(sess, list(names), feed(sess, x))
        out.append({n: np.asarray(v).astype(np.float32, copy=False) for n, v in zip(names, vals)})
    return out


def toposort(model) -> None:
    """Reorder graph nodes topologically in place (stable: keeps the file order where it can)."""
    g = model.graph
    nodes = list(g.node)
    available = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    done = [False] * len(nodes)
    order: list[onnx.NodeProto] = []
    progress = True
    while progress and len(order) < len(nodes):
        progress = False
        for i, node in enumerate(nodes):
            if not done[i] and all(n in available for n in node.input):
                done[i] = progress = True
                order.append(node)
                available.update(node.output)
    if len(order) != len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if not done[i])
        raise ExportError(f"graph has a cycle or a missing input at node {stuck.name!r} ({stuck.op_type})")
    del g.node[:]
    g.node.extend(order)
