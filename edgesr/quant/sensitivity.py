"""Per-layer sensitivity and the mixed-precision search.

A *layer* is one quantizable compute node (Conv, or the residual Add) together with the
activation that follows it (Relu/PRelu/LeakyRelu/Clip), so that keeping a layer in float
removes every QuantizeLinear/DequantizeLinear that belongs to it.

Two ways to measure a layer's sensitivity (Y-PSNR on the evaluation set):

``only``    quantize only that layer, everything else float: ``cost = fp32 - psnr``
``except``  quantize everything except that layer: ``gain = psnr - int8_all``

``search`` keeps layers in float, most sensitive first, until the drop vs fp32 is within
the budget (one evaluation per step). ``greedy_search`` is the expensive reference: at each
step it tries every remaining layer and keeps the best one. docs/int8.md compares how
well each ranking predicts the greedy choice.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

ACTIVATIONS = ("Relu", "PRelu", "LeakyRelu", "Clip")
# Nodes made by exact rewrites that stay float: the PRelu decomposition (prelu.py) and the
# sums of a split concat-conv (concat.py).
FLOAT_TAGS = ("__prelu_", "__concat_split_")

# score(float_layers, only) -> mean Y-PSNR; `only` (a layer) means "quantize only this one".
ScoreFn = Callable[[Sequence[str], "str | None"], float]


@dataclass(frozen=True)
class Layer:
    name: str  # the compute node's name (what the tables show)
    op_type: str
    nodes: tuple[str, ...]  # node names excluded together to keep this layer float


@dataclass
class SensitivityRow:
    layer: str
    op_type: str
    only_cost: float | None = None  # dB lost when only this layer is int8
    except_gain: float | None = None  # dB gained when only this layer is float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchStep:
    float_layers: list[str]
    psnr: float
    drop: float
    speedup: float | None = None  # measured vs fp32 in the graph's runtime (None: not timed)
    skipped: str | None = None  # why this candidate's last layer was NOT kept float (e.g. too slow)


@dataclass
class SearchResult:
    float_layers: list[str]
    psnr: float
    drop: float
    within_budget: bool
    steps: list[SearchStep] = field(default_factory=list)
    evaluations: int = 0
    skipped_slow: list[SearchStep] = field(default_factory=list)  # candidates not taken: too slow


def quantizable_layers(model, op_types: Sequence[str], skip: Sequence[str] = ()) -> list[Layer]:
    """Compute nodes of `op_types` (graph order, minus the names in `skip`) with their
    trailing activation."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    # An elementwise Add with a constant operand (LayerNorm's eps, GELU's +1) gains nothing from
    # int8 and would quantize a scalar constant, which TensorRT refuses: only activation + activation.
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    layers = []
    claimed: set[str] = set()  # trailing activations already merged into the layer before them
    for n in model.graph.node:
        if n.op_type not in op_types or any(t in n.name for t in FLOAT_TAGS) or n.name in skip or n.name in claimed:
            continue
        if n.op_type == "Add" and any(t in constants for t in n.input):
            continue
        nodes = [n.name]
        cons = consumers.get(n.output[0], [])
        if len(cons) == 1 and cons[0].op_type in ACTIVATIONS and not any(t in cons[0].name for t in FLOAT_TAGS):
            nodes.append(cons[0].name)
            claimed.add(cons[0].name)
        layers.append(Layer(n.name, n.op_type, tuple(nodes)))
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names) or any(not x for x in names):
        from ..errors import QuantizationError

        raise QuantizationError("quantizable nodes need unique, non-empty names (re-export the model)")
    return layers


def sensitivity(layers: Sequence[Layer], score: ScoreFn, fp32: float, int8_all: float,
                methods: Sequence[str] = ("only", "except"), progress: bool = False) -> list[SensitivityRow]:
    from ..progress import track

    rows = []
    for layer in track(layers, "INT8 sensitivity", unit="layers", show=progress):
        row = SensitivityRow(layer.name, layer.op_type)
        if "only" in methods:
            row.only_cost = fp32 - score([], layer.name)
        if "except" in methods:
            row.except_gain = score([layer.name], None) - int8_all
        rows.append(row)
    return rows


ELEMENTWISE = ("Add", "Sub", "Mul", "Div")


def constant_operand_nodes(model) -> list[str]:
    """Elementwise nodes with a constant operand (``x + eps``, ``0.5 * x``, a bias Add): not
    residual joins. Quantizing them quantizes the constant too, and TensorRT refuses
    quantized rank-0 constants ("Quantized constant ... is only allowed before DQ")."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in ELEMENTWISE and any(t in consts for t in n.input)]


def ranking(rows: Sequence[SensitivityRow], method: str) -> list[str]:
    """Layer names, most sensitive first, by `method` ('only' or 'except')."""
    key = (lambda r: r.only_cost) if method == "only" else (lambda r: r.except_gain)
    return [r.layer for r in sorted(rows, key=lambda r: -(key(r) if key(r) is not None else -math.inf))]


# speed(float_layers) -> (measured speed-up vs fp32, fast enough to keep)
SpeedFn = Callable[[Sequence[str]], "tuple[float, bool]"]


def search(order: Sequence[str], score: ScoreFn, fp32: float, int8_all: float, budget: float,
           max_float: int | None = None, progress: bool = False, speed: SpeedFn | None = None) -> SearchResult:
    """Keep layers float in `order` until fp32 - psnr <= budget.

    Returns the first graph within the budget or, when none is (``max_float`` reached or
    `order` exhausted), the BEST graph evaluated - all-int8 included - so the search never
    ends worse than where it started (quantization errors interact: keeping one more layer
    float can lower the PSNR).

    `speed`: a candidate whose measured speed is not enough (a float layer costs Q/DQ and a float
    conv: an "INT8" graph slower than fp32 is of no use) is not taken; the search goes on with
    the next layer instead, and the step records why."""
    start = SearchStep([], int8_all, fp32 - int8_all)
    res = SearchResult([], int8_all, fp32 - int8_all, fp32 - int8_all <= budget, [start])
    chosen: list[str] = []
    from ..progress import progress as live

    most = len(order) if max_float is None else min(len(order), max_float)
    with live("INT8 search (layers kept float)", most, "candidates", show=progress) as bar:
        for name in order:
            if res.within_budget or (max_float is not None and len(chosen) >= max_float):
                break
            trial = chosen + [name]
            ratio = None
            if speed is not None:
                ratio, fast = speed(trial)
                if not fast:
                    res.skipped_slow.append(SearchStep(trial, math.nan, math.nan, ratio, "slower than allowed"))
                    bar.update()
                    continue
            chosen = trial
            p = score(list(chosen), None)
            res.evaluations += 1
            res.steps.append(SearchStep(list(chosen), p, fp32 - p, ratio))
            res.within_budget = fp32 - p <= budget
            bar.update()
            bar.set_postfix(f"drop {fp32 - p:.3f} dB (budget {budget})")
    best = res.steps[-1] if res.within_budget else max(res.steps, key=lambda s: (s.psnr, -len(s.float_layers)))
    res.float_layers, res.psnr, res.drop = list(best.float_layers), best.psnr, best.drop
    return res


def greedy_search(names: Sequence[str], score: ScoreFn, fp32: float, int8_all: float, budget: float,
                  max_float: int | None = None) -> SearchResult:
    """Reference search: each step keeps float the layer whose exclusion scores best."""
    res = SearchResult([], int8_all, fp32 - int8_all, fp32 - int8_all <= budget,
                       [SearchStep([], int8_all, fp32 - int8_all)])
    chosen: list[str] = []
    remaining = list(names)
    while not res.within_budget and remaining and (max_float is None or len(chosen) < max_float):
        trials = [(score(chosen + [n], None), n) for n in remaining]
        res.evaluations += len(trials)
        p, best = max(trials)
        chosen.append(best)
        remaining.remove(best)
        res.steps.append(SearchStep(list(chosen), p, fp32 - p))
        res.float_layers, res.psnr, res.drop = list(chosen), p, fp32 - p
        res.within_budget = res.drop <= budget
    return res


def layer_label(node: str) -> str:
    """A readable layer label from an exported node name: ``/backbone/backbone.0/Conv`` ->
    ``backbone.0`` (the exporter repeats each parent module's path in its child's name and
    ends with the operator type)."""
    parts = [p for p in node.strip("/").split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0].isalpha() and parts[-1][:1].isupper():
        parts = parts[:-1]  # the operator (Conv, Conv_1, Add, ...)
    kept: list[str] = []
    for p in parts:
        if kept and (p == kept[-1] or p.startswith(kept[-1] + ".")):
            kept[-1] = p  # "backbone" then "backbone.0": keep the longer path once
        else:
            kept.append(p)
    return ".".join(kept) or node


def plot_sensitivity(rows: Sequence[SensitivityRow], path: str | os.PathLike, title: str = "",
                     float_layers: Sequence[str] = ()) -> Path:
    """Horizontal bar chart (PNG, written atomically) of both sensitivity measures."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..fsutil import atomic_path

    # layers whose INT8 form changes nothing (shape ops: Slice, Reshape, Concat, ...) would be
    # empty rows; they are named under the axis instead
    idle = [r for r in rows if not (r.only_cost or r.except_gain) and r.layer not in float_layers]
    shown = [r for r in rows if r not in idle] or list(rows)
    labels = [layer_label(r.layer) for r in shown]
    y = range(len(shown))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 2.0))
    h = 0.4
    if any(r.only_cost is not None for r in shown):
        ax.barh([i - h / 2 for i in y], [r.only_cost or 0.0 for r in shown], height=h,
                label="PSNR cost when ONLY this layer is INT8 (dB)", color="tab:red")
    if any(r.except_gain is not None for r in shown):
        ax.barh([i + h / 2 for i in y], [r.except_gain or 0.0 for r in shown], height=h,
                label="PSNR gain when only this layer stays float (dB)", color="tab:blue")
    ax.set_yticks(list(y))
    ax.set_yticklabels([f"{lab} *" if r.layer in float_layers else lab for lab, r in zip(labels, shown)])
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    xlabel = "Y-PSNR change (dB) on the evaluation set" + ("   (* kept float)" if float_layers else "")
    if idle and len(shown) < len(rows):
        names = ", ".join(layer_label(r.layer) for r in idle[:8]) + (", ..." if len(idle) > 8 else "")
        xlabel += f"\nno measurable effect, not drawn: {names}"
    ax.set_xlabel(xlabel, fontsize=9)
    # the legend between title and bars: never over the bars (the longest end where an inner one sits)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=1, fontsize=8, frameon=False)
    ax.set_title(title or "INT8 per-layer sensitivity", fontsize=10, pad=34)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
