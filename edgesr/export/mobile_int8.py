"""INT8 preparation of a PyTorch deploy module for the mobile quantizers (LiteRT, ncnn).

edgesr's ONNX INT8 path (:mod:`edgesr.quant`) keeps SR pictures by rewriting the fp32 graph
before quantizing it. The mobile formats are quantized by other tools (ai-edge-quantizer for
LiteRT, edgesr's own ncnn2int8 for ncnn), so the same ideas are applied here one level
earlier, to the PyTorch module that litert-torch / pnnx convert:

1. **activation-range equalization** (exact): for ``Conv A -> Relu|PRelu|LeakyRelu|- -> Conv B``
   output channel ``c`` of A is multiplied by ``s_c = (R / r_c) ** alpha`` and input channel
   ``c`` of B divided by it, so every channel of the tensor between them spans its full
   per-tensor int8 range (see :mod:`edgesr.quant.equalize`). Checked on the calibration data.
2. **weights on the int8 grid** (GPTQ rounding, :func:`edgesr.quant.refine.gptq_codes`): each
   conv's weights are replaced by ``codes * scale`` with the quantizers' own symmetric
   per-output-channel scale ``max|w| / 127``, the codes chosen to minimise the output error
   on the layer's real inputs. Both quantizers recompute the same scale from these weights
   and round them to exactly these codes (checked on the written files by the tests), so the
   rounding edgesr chose is the rounding the runtime uses.
3. **bias correction**: the mean output shift of the weight error, ``(W_q - W) E[x]``,
   is subtracted from the bias.

Step 1 leaves the function unchanged; steps 2-3 *are* the weight quantization, so the
prepared module is not compared with the original at 1e-4 but by the INT8 verdict (PSNR on
the held-out sample photos). Statistics come from the calibration inputs only.

Topology (which conv feeds which, through which activation) is read from ``torch.export``;
tensor statistics are collected with forward pre-hooks on the ``nn.Conv2d`` modules, so a
model whose graph cannot be exported still gets steps 2-3.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import QuantizationError

EXACT_TOL = 1e-4  # max |equalized - original| on the calibration inputs (outputs ~[0, 1])
HOMOGENEOUS = ("relu", "relu_", "prelu", "_prelu_kernel", "leaky_relu", "leaky_relu_")
MAX_ROWS = 16384  # im2col rows per conv entering E[x x^T]


@dataclass
class PrepReport:
    equalized: list[dict[str, Any]] = field(default_factory=list)  # producer, consumer, scale range
    equalize_note: str = ""  # why equalization was skipped, if it was
    equalize_max_abs_change: float | None = None
    prelu_split: list[str] = field(default_factory=list)  # PReLU modules rewritten as ReLU on doubled channels
    prelu_split_max_abs_change: float | None = None
    gptq_layers: list[str] = field(default_factory=list)
    rtn_rows: dict[str, int] = field(default_factory=dict)  # rows kept on round-to-nearest, per layer
    bias_corrected: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # conv -> reason it was left as is

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Int8Options:
    """What the mobile INT8 paths do (every step on by default; off only to measure its effect).

    equalize / alpha / max_scale, gptq, bias_correction, damp: PyTorch-level steps (module docstring);
    center: ncnn zero-centring of conv inputs (symmetric activations; :mod:`edgesr.export.ncnn_int8`);
    ranges: LiteRT activation ranges, "minmax" (true min/max over the calibration inputs) or
        "moving-average" (ai-edge-quantizer's own default, which clips);
    full_input_range: LiteRT input range covers the model's whole value range;
    split_prelu: LiteRT ``Conv -> PReLU -> Conv`` as Conv -> ReLU -> Conv on doubled channels
        (:func:`split_prelu`; exact, twice the channels between the two convolutions).
    """

    equalize: bool = True
    alpha: float = 1.0
    max_scale: float = 64.0
    gptq: bool = True
    bias_correction: bool = True
    damp: float = 0.01
    center: bool = True
    ranges: str = "minmax"
    full_input_range: bool = True
    split_prelu: bool = True

    def __post_init__(self):
        if self.ranges not in ("minmax", "moving-average"):
            raise QuantizationError(f"ranges must be minmax or moving-average, got {self.ranges!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conv_modules(module) -> dict[str, Any]:
    """name -> nn.Conv2d of `module` that quantizers see as one conv with per-channel weights."""
    from torch import nn

    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros"}


def equalizable_pairs(module, sample) -> tuple[list[tuple[str, str, str]], str]:
    """((producer conv, activation, consumer conv), note): chains ``Conv A -> f -> Conv B`` with
    ``f`` positively homogeneous (or absent), A's output read only by f (or B), both plain convs
    (groups 1) whose weights are used once. Read from ``torch.export``; note says why none."""
    import torch
    from torch import nn

    convs = conv_modules(module)
    try:
        with torch.no_grad():
            ep = torch.export.export(module, (sample,), strict=False)
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        return [], f"torch.export failed ({type(e).__name__}); equalization skipped"
    params = ep.graph_signature.inputs_to_parameters
    nodes = {n.name: n for n in ep.graph.nodes}

    def conv_of(node) -> str | None:
        if node.op != "call_function" or getattr(node.target, "__name__", "").split(".")[0] not in (
                "conv2d", "convolution"):
            return None
        w = node.args[1]
        if not hasattr(w, "name") or w.name not in params or len(nodes[w.name].users) != 1:
            return None
        name = params[w.name].rsplit(".", 1)[0]
        m = convs.get(name)
        if m is None or m.groups != 1:
            return None
        if m.bias is not None:
            b = node.args[2] if len(node.args) > 2 else None
            if b is None or not hasattr(b, "name") or len(nodes[b.name].users) != 1:
                return None
        return name

    pairs = []
    for node in ep.graph.nodes:
        a = conv_of(node)
        if a is None or len(node.users) != 1:
            continue
        nxt = next(iter(node.users))
        op = getattr(nxt.target, "__name__", "").split(".")[0]
        act = ""
        if op in HOMOGENEOUS:
            if len(nxt.users) != 1:
                continue
            nxt_in, act = nxt, ("prelu" if "prelu" in op else op.strip("_"))
            if act == "prelu":  # name the nn.PReLU whose slopes this node uses alone
                slope = getattr(nxt.args[1], "name", "") if len(nxt.args) > 1 else ""
                owner = params.get(slope, "").rsplit(".", 1)[0]
                plain = isinstance(module.get_submodule(owner), nn.PReLU) if owner else False
                act = f"prelu:{owner}" if plain and len(nodes[slope].users) == 1 else act
            nxt = next(iter(nxt.users))
        else:
            nxt_in = node
        b = conv_of(nxt)
        if b is not None and nxt.args[0] is nxt_in and a != b:
            pairs.append((a, act, b))
    return pairs, "" if pairs else "no Conv -> activation -> Conv chain"


def split_prelu(module, pairs: Sequence[tuple[str, str, str]]) -> list[str]:
    """Rewrite every ``Conv A -> nn.PReLU -> Conv B`` of `pairs` (from :func:`equalizable_pairs`,
    activation ``prelu:<module>``) in place, exactly, as a Conv -> ReLU -> Conv chain on doubled
    channels: ``PReLU(z) = relu(z) - sign(a) * relu(-|a| z)``, so A' outputs ``[z, -|a| z]``
    (weights ``[W_A; -|a| W_A]``, bias ``[b_A; -|a| b_A]``), the PReLU becomes a ReLU (fused
    into A' by the converters) and B' reads both halves with weights ``[W_B, -sign(a) W_B]``.
    The slope goes into A', not B': each half then spans exactly the range of the PReLU
    output's positive or negative part, and B' keeps W_B's magnitudes. (``-a * W_B`` in B'
    instead put a channel of range 12 behind weights 0.09x as large: B's weight rounding then
    cost ECBSR-M4C16 0.49 dB, measured.)

    Why (LiteRT, every tensor int8): the converter decomposes PReLU into relu / mul / mul / sub,
    so A's output is quantized per tensor *before* the PReLU and again after it. A channel with
    a wide negative side and a small slope spans 12x more before than after (ECBSR-M4C16,
    measured): no channel scaling suits both tensors, and the held-out drop was 0.58 dB. After
    the rewrite the only int8 tensor between A and B is a ReLU output, which equalization evens
    out per channel. The price: twice the channels between A and B. The same rewrite on ONNX
    graphs: :func:`edgesr.quant.prelu.split_prelu`. Returns the PReLU modules replaced."""
    import torch
    from torch import nn

    done = []
    with torch.no_grad():
        for a, act, b in pairs:
            if not act.startswith("prelu:"):
                continue
            owner = act.split(":", 1)[1]
            ca, pr, cb = (module.get_submodule(n) for n in (a, owner, b))
            if cb.in_channels != ca.out_channels or cb.groups != 1 or ca.groups != 1:
                continue
            c = ca.out_channels
            slope = pr.weight.detach().double().flatten()
            slope = slope.expand(c) if slope.numel() == 1 else slope
            if slope.numel() != c:
                continue
            w, bias = ca.weight.detach().double(), (ca.bias.detach().double() if ca.bias is not None
                                                    else torch.zeros(c, dtype=torch.float64))
            new_a = _conv_like(ca, in_channels=ca.in_channels, out_channels=2 * c)
            mag = slope.abs()
            new_a.weight.copy_(torch.cat([w, -mag.view(-1, 1, 1, 1) * w]).to(ca.weight.dtype))
            new_a.bias.copy_(torch.cat([bias, -mag * bias]).to(ca.weight.dtype))
            wb = cb.weight.detach().double()
            new_b = _conv_like(cb, in_channels=2 * c, out_channels=cb.out_channels)
            new_b.weight.copy_(torch.cat([wb, -torch.sign(slope).view(1, -1, 1, 1) * wb], dim=1).to(cb.weight.dtype))
            if cb.bias is not None:
                new_b.bias.copy_(cb.bias.detach())
            module.set_submodule(a, new_a)
            module.set_submodule(owner, nn.ReLU())
            module.set_submodule(b, new_b)
            done.append(owner)
    return done


def _conv_like(conv, *, in_channels: int, out_channels: int):
    """An nn.Conv2d with `conv`'s geometry and `in_channels` / `out_channels` (bias always)."""
    from torch import nn

    return nn.Conv2d(in_channels, out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, bias=True, padding_mode=conv.padding_mode).to(conv.weight.dtype)


class _InputStats:
    """Forward pre-hooks collecting, per conv module, the input's per-channel min/max and the
    im2col second moments E[x x^T] and mean E[x] (float64)."""

    def __init__(self, convs: dict[str, Any], moments: bool, seed: int = 0):
        self.convs, self.moments = convs, moments
        self.lo: dict[str, np.ndarray] = {}
        self.hi: dict[str, np.ndarray] = {}
        self.H: dict[str, np.ndarray] = {}
        self.sum: dict[str, np.ndarray] = {}
        self.count: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self.rows_per_call = MAX_ROWS
        self.rng = np.random.default_rng(seed)
        self.out_lo: dict[str, np.ndarray] = {}
        self.out_hi: dict[str, np.ndarray] = {}
        self.handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in convs.items()]
        self.handles += [m.register_forward_hook(self._out_hook(n)) for n, m in convs.items()]

    def _out_hook(self, name: str):
        def hook(mod, args, out):
            y = out.detach().double()
            lo, hi = y.amin(dim=(0, 2, 3)).numpy(), y.amax(dim=(0, 2, 3)).numpy()
            self.out_lo[name] = lo if name not in self.out_lo else np.minimum(self.out_lo[name], lo)
            self.out_hi[name] = hi if name not in self.out_hi else np.maximum(self.out_hi[name], hi)
            return None
        return hook

    def _hook(self, name: str):
        def hook(mod, args):
            import torch
            from torch.nn import functional as F

            x = args[0].detach().double()
            lo, hi = x.amin(dim=(0, 2, 3)).numpy(), x.amax(dim=(0, 2, 3)).numpy()
            self.lo[name] = lo if name not in self.lo else np.minimum(self.lo[name], lo)
            self.hi[name] = hi if name not in self.hi else np.maximum(self.hi[name], hi)
            if not self.moments or mod.groups != 1:
                return None
            cols = F.unfold(x, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
            cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # rows x (Cin*kh*kw), weight order
            self.sum[name] = self.sum.get(name, 0.0) + cols.sum(0).numpy()
            self.count[name] = self.count.get(name, 0) + cols.shape[0]
            if cols.shape[0] > self.rows_per_call:
                idx = torch.from_numpy(self.rng.choice(cols.shape[0], self.rows_per_call, replace=False))
                cols = cols[idx]
            self.H[name] = self.H.get(name, 0.0) + (cols.T @ cols).numpy()
            self.rows[name] = self.rows.get(name, 0) + cols.shape[0]
            return None
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _collect(module, inputs: Sequence[np.ndarray], moments: bool) -> _InputStats:
    import torch

    stats = _InputStats(conv_modules(module), moments)
    stats.rows_per_call = max(1, MAX_ROWS // max(1, len(inputs)))
    try:
        with torch.no_grad():
            for x in inputs:
                module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    finally:
        stats.close()
    return stats


def equalize(module, inputs: Sequence[np.ndarray], pairs: Sequence[tuple[str, str, str]], *, alpha: float = 1.0,
             max_scale: float = 64.0, symmetric: bool = True) -> list[dict[str, Any]]:
    """Equalize `pairs` of `module` in place (see the module docstring); returns what was done.

    The channel ranges equalized are those of the tensor the runtime quantizes first: B's input
    (after the activation) for symmetric schemes that quantize only conv inputs (ncnn); for
    LiteRT, which quantizes every tensor, A's output *before* a PReLU / LeakyReLU (a separate
    op there, whose negative tails the post-activation range hides; measured: equalizing
    ECBSR's post-PReLU ranges doubled its LiteRT drop), else after the (fused) ReLU."""
    import torch

    if not pairs or alpha <= 0:
        return []
    stats = _collect(module, inputs, moments=False)
    convs = conv_modules(module)
    done = []
    with torch.no_grad():
        for a, act, b in pairs:
            lo, hi = stats.lo.get(b), stats.hi.get(b)
            if not symmetric and act.split(":")[0] in ("prelu", "leaky_relu"):
                lo, hi = stats.out_lo.get(a), stats.out_hi.get(a)
            if lo is None:
                continue  # never ran on these inputs
            r = np.maximum(np.abs(lo), np.abs(hi)) if symmetric else hi - np.minimum(lo, 0.0)
            big = float(r.max())
            if not big > 0:
                continue
            live = r > big * 1e-3  # dead channels: leave them alone
            s = np.ones_like(r)
            s[live] = (big / r[live]) ** alpha
            s = np.clip(s, 1.0 / max_scale, max_scale)
            ca, cb = convs[a], convs[b]
            st = torch.from_numpy(s)
            ca.weight.copy_((ca.weight.double() * st.view(-1, 1, 1, 1)).to(ca.weight.dtype))
            if ca.bias is not None:
                ca.bias.copy_((ca.bias.double() * st).to(ca.bias.dtype))
            cb.weight.copy_((cb.weight.double() / st.view(1, -1, 1, 1)).to(cb.weight.dtype))
            after = r * s
            done.append({"producer": a, "activation": act.split(":")[0] or "none", "consumer": b,
                         "scale_min": round(float(s.min()), 4),
                         "scale_max": round(float(s.max()), 4),
                         "range_ratio_before": round(float(big / r[live].min()), 3),
                         "range_ratio_after": round(float(after.max() / after[live].min()), 3)})
    return done


def _exact_or_refuse(original, prepared, inputs: Sequence[np.ndarray], rewrite: str) -> float:
    """The fp32 output change a rewrite of `prepared` made (on up to 4 inputs); QuantizationError past EXACT_TOL."""
    change = _max_abs_change(original, prepared, inputs[: min(4, len(inputs))])
    if not change <= EXACT_TOL:
        raise QuantizationError(f"{rewrite} changed the fp32 output by {change:.2e} (> {EXACT_TOL}); this model's "
                                "graph defeats the rewrite")
    return change


def _max_abs_change(a, b, inputs: Sequence[np.ndarray]) -> float:
    import torch

    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            worst = max(worst, float((a(t) - b(t)).abs().max()))
    return worst


def grid_scale(w: np.ndarray) -> np.ndarray:
    """Per-output-channel symmetric int8 scale max|w| / 127 (what both quantizers use)."""
    wmax = np.abs(w).max(axis=1)
    return np.where(wmax > 0, wmax / 127.0, 1.0)


def quantize_weights(module, inputs: Sequence[np.ndarray], *, gptq: bool = True, bias_correction: bool = True,
                     damp: float = 0.01, report: PrepReport | None = None,
                     unrounded: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None) -> PrepReport:
    """Put every plain conv's weights of `module` on its int8 grid in place (GPTQ or
    round-to-nearest codes x scale) and correct the biases; see the module docstring.
    `unrounded`, when given, receives each changed conv's weights and bias from before (float64):
    what a layer the verdict keeps float should compute with."""
    import torch

    from ..quant.refine import gptq_codes

    report = report or PrepReport()
    stats = _collect(module, inputs, moments=True)
    with torch.no_grad():
        for name, conv in conv_modules(module).items():
            if name not in stats.H:
                report.skipped[name] = "not run on the calibration inputs"
                continue
            if conv.groups != 1:
                report.skipped[name] = "grouped/depthwise conv (left to the quantizer's rounding)"
                continue
            w = conv.weight.detach().double().numpy()
            if unrounded is not None:
                unrounded[name] = (w.copy(), None if conv.bias is None else conv.bias.detach().double().numpy().copy())
            o = w.shape[0]
            W = w.reshape(o, -1)
            scale = grid_scale(W)
            rtn = np.clip(np.round(W / scale[:, None]), -127, 127)
            codes = rtn
            if gptq:
                H = stats.H[name] / max(1, stats.rows[name])
                g = gptq_codes(W, scale, np.full(o, 127.0), H, damp)
                # the quantizer recomputes scale = max|w| / 127 from the baked weights: a row whose
                # largest code is no longer +-127 would be re-scaled and re-rounded, so it keeps RTN
                keep = np.abs(g).max(axis=1) == 127
                codes = np.where(keep[:, None], g, rtn)
                report.rtn_rows[name] = int((~keep).sum())
                report.gptq_layers.append(name)
            Wq = codes * scale[:, None]
            conv.weight.copy_(torch.from_numpy(Wq.reshape(w.shape)).to(conv.weight.dtype))
            if bias_correction:
                mean = stats.sum[name] / max(1, stats.count[name])
                shift = (Wq - W) @ mean
                if conv.bias is None:
                    conv.bias = torch.nn.Parameter(torch.zeros(o, dtype=conv.weight.dtype))
                conv.bias.copy_((conv.bias.double() - torch.from_numpy(shift)).to(conv.bias.dtype))
                report.bias_corrected.append(name)
    return report


def prepare_int8(module, inputs: Sequence[np.ndarray], options: Int8Options | None = None, *,
                 symmetric: bool = True, split_prelus: bool = False,
                 unrounded: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None) -> tuple[Any, PrepReport]:
    """(prepared copy of `module`, PrepReport). `inputs`: NCHW float32 calibration arrays.
    symmetric: equalize max|x| per channel (symmetric activations, ncnn) or max - min(min, 0)
    (asymmetric, LiteRT). split_prelus: first rewrite ``Conv -> PReLU -> Conv`` chains with
    :func:`split_prelu` (when `options.split_prelu`; LiteRT, which quantizes both sides of a PReLU).
    unrounded: filled with each conv's exact (equalized) weights and bias before steps 2-3
    (:func:`quantize_weights`)."""
    import torch

    opts = options or Int8Options()
    if not inputs:
        raise QuantizationError("INT8 preparation needs calibration inputs")
    original = module.eval().float().cpu()
    prepared = copy.deepcopy(original).eval()
    report = PrepReport()
    if split_prelus and opts.split_prelu:
        pairs, _ = equalizable_pairs(prepared, torch.from_numpy(inputs[0]))
        report.prelu_split = split_prelu(prepared, pairs)
        if report.prelu_split:
            report.prelu_split_max_abs_change = _exact_or_refuse(
                original, prepared, inputs, "splitting PReLU into ReLU on doubled channels")
    if opts.equalize:
        pairs, report.equalize_note = equalizable_pairs(prepared, torch.from_numpy(inputs[0]))
        report.equalized = equalize(prepared, inputs, pairs, alpha=opts.alpha, max_scale=opts.max_scale,
                                    symmetric=symmetric)
        if report.equalized:
            report.equalize_max_abs_change = _exact_or_refuse(original, prepared, inputs, "activation equalization")
    if opts.gptq or opts.bias_correction:
        quantize_weights(prepared, inputs, gptq=opts.gptq, bias_correction=opts.bias_correction, damp=opts.damp,
                         report=report, unrounded=unrounded)
    return prepared, report


def float_layer_search(layers: Sequence[str], drop_of, budget: float | None,
                        max_float: int | None = None) -> tuple[list[str], float, list[dict[str, Any]]]:
    """Mixed precision, as edgesr's ONNX INT8 search (:mod:`edgesr.quant.sensitivity`, "only"
    ranking, the one that predicted the exhaustive greedy search best in docs/int8.md): with every
    layer INT8 over `budget`, rank the layers by the drop each causes when it is the only INT8
    layer, then keep float the most costly ones, one more at a time, until ``drop_of(float_layers)
    <= budget`` (None: no search). len(layers) + k + 1 evaluations; 2 when even every layer float
    misses the budget (LiteRT quantizes every tensor, not only the convolutions' inputs: what is
    not a convolution can cost more than the budget alone), then the search is skipped and the
    step says so. Returns (float layers, drop, steps; the first step carries the ranking): the
    first set within budget, else the best one seen."""
    layers = list(layers)
    drop = drop_of([])
    steps: list[dict[str, Any]] = [{"float_layers": [], "drop": round(drop, 4)}]
    if budget is None or drop <= budget or len(layers) < 2:
        return [], drop, steps
    floor = drop_of(layers)
    if floor > budget:
        steps.append({"float_layers": list(layers), "drop": round(floor, 4),
                      "note": "every convolution float still misses the budget: the INT8 operations that are not "
                              "convolutions cost more than it, so no search"})
        return ([], drop, steps) if drop <= floor else (list(layers), floor, steps)
    only = {n: drop_of([m for m in layers if m != n]) for n in layers}
    order = sorted(layers, key=lambda n: -only[n])
    steps[0]["only_int8_drop"] = {n: round(only[n], 4) for n in order}
    limit = len(layers) - 1 if max_float is None else min(max_float, len(layers) - 1)
    skip: list[str] = []
    best: tuple[float, list[str]] = (drop, [])
    for n in order[:limit]:
        skip.append(n)
        d = drop_of(skip)
        steps.append({"float_layers": list(skip), "drop": round(d, 4)})
        if d < best[0]:
            best = (d, list(skip))
        if d <= budget:
            break
    # never end worse than a step already seen (more float layers can lower PSNR: errors cancel)
    return best[1], best[0], steps
