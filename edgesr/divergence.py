"""Where two ONNX graphs of one model first diverge: tensors both graphs share, matched in the test
graph's topological order, searched k-ary by exposing a few intermediate tensors per round."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ParityError


@dataclass
class Divergence:
    node: str
    op_type: str
    tensor: str
    max_abs: float
    rel: float  # max_abs / max |reference tensor|
    sample: str
    rounds: int
    probed: int  # tensors exposed in total
    candidates: int  # tensors both graphs share


def matched_tensors(ref_model, test_model) -> list[tuple[str, str]]:
    """(test tensor, reference tensor) pairs in the test graph's topological order.

    Names match directly when one model derives from the other (simplified / fp16 / int8 of
    the same export); a QDQ model's ``DequantizeLinear(QuantizeLinear(X))`` output maps to X.
    """
    from .export import graph as G

    ref_types = G.tensor_types(ref_model)
    ref_acts = set(G.activation_names(ref_model, ref_types))
    test_types = G.tensor_types(test_model)
    prod = G.producers(test_model)
    ref_shapes, test_shapes = G.static_dims(ref_model), G.static_dims(test_model)
    # QDQ: X -> QuantizeLinear -> DequantizeLinear -> dq. Compare dq with the reference's X:
    # X itself may differ on purpose (quantizers fold a following ReLU into the Q clamp).
    dq_of: dict[str, str] = {}
    for node in test_model.graph.node:
        if node.op_type == "DequantizeLinear":
            q = prod.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in ref_acts:
                dq_of.setdefault(q.input[0], node.output[0])
    pairs, seen = [], set()
    for t in G.activation_names(test_model, test_types):
        node = prod.get(t)
        r = None
        if t in ref_acts and t not in dq_of:
            r = t
        elif node is not None and node.op_type == "DequantizeLinear":
            q = prod.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and dq_of.get(q.input[0]) == t:
                r = q.input[0]
        if r is not None and not _compatible(ref_shapes.get(r), test_shapes.get(t)):
            r = None  # same name, different tensor (graphs not derived from one another)
        if r is not None and r not in seen:
            seen.add(r)
            pairs.append((t, r))
    return pairs


def _origin(prod: dict, tensor: str):
    """The node that computes `tensor`, looking through QuantizeLinear/DequantizeLinear pairs."""
    node = prod.get(tensor)
    for _ in range(4):
        if node is None or node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            break
        nxt = prod.get(node.input[0])
        if nxt is None:
            break
        node = nxt
    return node


def _compatible(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def first_divergence(ref_model, test_model, x: np.ndarray, *, rtol: float = 1e-4, atol: float = 1e-6,
                     probe: int = 4, sample: str = "") -> Divergence | None:
    """First tensor (in the test graph's topological order) whose value differs from the
    reference's by more than ``atol + rtol * max|reference|`` on input `x`.

    A k-ary search: each round exposes at most `probe` tensors on copies of both models,
    assuming that once a tensor diverges, what is computed from it diverges too. Both run
    with ORT "basic" optimizations, so QDQ graphs are evaluated as defined (float math on
    dequantized values), not through fused integer kernels. Returns None when no shared
    tensor diverges.
    """
    from .export import graph as G

    ref_m, test_m = G.load(ref_model), G.load(test_model)
    pairs = matched_tensors(ref_m, test_m)
    if not pairs:
        raise ParityError("the two graphs share no tensor names (not exported from one another); "
                          "cannot localise the divergence")
    ref_types, test_types = G.tensor_types(ref_m), G.tensor_types(test_m)
    prod = G.producers(test_m)
    cache: dict[int, tuple[bool, float, float]] = {}

    def evaluate(idx: list[int]) -> None:
        idx = [i for i in idx if i not in cache]
        if not idx:
            return
        tv = G.run_tensors(test_m, [pairs[i][0] for i in idx], [x], test_types)[0]
        rv = G.run_tensors(ref_m, [pairs[i][1] for i in idx], [x], ref_types)[0]
        for i in idx:
            a: np.ndarray = rv[pairs[i][1]].astype(np.float64)
            b: np.ndarray = tv[pairs[i][0]].astype(np.float64)
            if a.shape != b.shape:
                cache[i] = (True, math.inf, math.inf)
                continue
            err = float(np.max(np.abs(a - b))) if a.size else 0.0
            peak = float(np.max(np.abs(a))) if a.size else 0.0
            bad = not err <= atol + rtol * peak
            cache[i] = (bad, err, err / peak if peak > 0 else math.inf)

    rounds = [0]

    def counted(idx: list[int]) -> None:
        rounds[0] += 1
        evaluate(idx)

    hi = _search(0, len(pairs), counted, cache, probe)
    if hi is None:
        return None
    t, r = pairs[hi]
    node = _origin(prod, t)
    _, err, rel = cache[hi]
    return Divergence(node=node.name if node is not None else t, op_type=node.op_type if node is not None else "",
                      tensor=t, max_abs=err, rel=rel, sample=sample, rounds=rounds[0], probed=len(cache),
                      candidates=len(pairs))


def _search(lo: int, hi: int, evaluate, cache, probe: int) -> int | None:
    """Smallest diverging index in [lo, hi) (None if all agree), probing a few at a time."""
    found = None
    while lo < hi:
        span = hi - lo
        k = min(probe, span)
        idx = sorted({lo + (span * j) // k for j in range(k)})
        evaluate(idx)
        bad = [i for i in idx if cache[i][0]]
        if bad:
            found = bad[0]
            good_below = [i for i in idx if i < found]
            lo = (max(good_below) + 1) if good_below else lo
            hi = found
        else:
            lo = max(idx) + 1
    return found
