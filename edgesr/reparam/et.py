"""The Equivalent Transformation (ETDS, Chao et al., CVPR 2023) as a generic pass.

`equivalent_transform(model)` takes a *plain* SR network::

    y = PixelShuffle_s( conv_n( act( ... act(conv_1(x)) ... ) ) [+ repeat_interleave(x, s*s, dim=1)] )
    [y = clamp(y, 0, 1)]

(any chain of stride-1, "same"-padded convs with ReLU / PReLU / nothing between them,
an optional global residual that repeats the input s*s times along channels, an
optional final clamp) and returns an equivalent network made only of
Conv + ReLU/PReLU + PixelShuffle (DepthToSpace), which runs faster on mobile NPUs:

* The residual is folded into the conv stack: every hidden conv gets ``colors`` extra
  output channels that copy the input (an identity kernel at the kernel centre, zero
  bias). The input is in [0, 1], so ReLU and PReLU pass these channels unchanged; their
  PReLU slopes are set to 0 (any value works for values >= 0). The carried values are
  the input itself at every layer, so they stay >= 0 all the way down.
* The last conv adds the carried input to each of the s*s sub-pixel channels of its
  colour and, together with a 1x1 "clip" conv, clamps the result:
  ``clamp(y, 0, 1) = relu(1 - relu(1 - y))``: the last conv computes ``1 - y``, the clip
  conv has weights ``-I`` and bias 1, both followed by ReLU.

The result equals ``clamp(model(x), 0, 1)`` for inputs in [0, 1] (and only for those).

Channel padding (``pad="official"``, the layout of the ECBSR_ET / ABPN_ET checkpoints of
ECNUSR/ETDS): a hidden layer whose width is a multiple of 4 gets ``round_up(colors, 4)``
extra channels (for RGB: 1 zero channel, then the 3 carried ones, so it stays 4-aligned);
any other hidden layer gets exactly ``colors`` (e.g. ABPN's x3 tail 27 -> 30, the only_ET
ablation 29 -> 32). The output conv is padded to a multiple of 4 (x3 RGB: 27 -> 28; the
padding channel is dropped before PixelShuffle). ``pad="none"`` adds only what is needed.
Channel order is ``[original, zero padding, carried colours]``, as in the official code.

The model is read with ``torch.fx``; anything that is not such a chain is refused with
`NotTransformable` naming the operation. Family modules register an `ETLayout` so that
a known source (ECBSR deploy, ABPN, Plain, the only_ET ablation) comes out as the
module class of the official ET checkpoints (same state_dict keys); anything else
comes out as a generic `ETNet`.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..architecture import Architecture, LoadedModel, match_variant, scale_from_channels
from . import ReparamError, TrainingBlock

if TYPE_CHECKING:  # pragma: no cover
    from ..spec import Spec

Tensor = torch.Tensor
PADS = ("official", "none")


class NotTransformable(ReparamError):
    """The model is not a plain chain the Equivalent Transformation can fold."""


# ---- the chain ----------------------------------------------------------------------------

@dataclass
class ConvStep:
    """One conv of a plain chain and the activation that follows it."""

    weight: Tensor  # dense (out, in, kh, kw)
    bias: Tensor  # (out,)
    act: str = "linear"  # "relu" | "prelu" | "linear"
    slopes: Tensor | None = None  # PReLU weight, (1,) or (out,)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]


@dataclass
class PlainChain:
    steps: list[ConvStep]
    colors: int
    scale: int
    residual: bool  # PixelShuffle(chain(x) + repeat_interleave(x, s*s))
    clamped: bool  # the model clamps its output to [0, 1]


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def carried_extra(width: int, colors: int, pad: str = "official") -> int:
    """Channels the ET adds to a hidden layer of `width` channels to carry `colors` inputs."""
    _check_pad(pad)
    if pad == "official" and width % 4 == 0:
        return round_up(colors, 4)
    return colors


def original_width(width: int, colors: int) -> int:
    """Inverse of ``w + carried_extra(w, colors)`` for an official-layout ET checkpoint. Two
    widths can map to the same result (28 + 4 = 29 + 3 = 32); the 4-aligned one is taken,
    as in every official ET checkpoint (ECBSR_ET, ABPN_ET)."""
    for w in (width - round_up(colors, 4), width - colors):
        if w > 0 and w + carried_extra(w, colors) == width:
            return w
    return width - colors


def padded_out(out_channels: int, pad: str = "official") -> int:
    """Output channels of the ET's last conv and clip (x3 RGB: 27 -> 28)."""
    _check_pad(pad)
    return round_up(out_channels, 4) if pad == "official" else out_channels


def scale_from_et_channels(out_channels: int, colors: int, hint: int | None, arch: str = "model") -> int:
    """Scale of an ET-form network from its clip conv's channels (x3 RGB: 28 = 27 + 1 padding)."""
    from ..errors import KeyMismatch

    for s in (1, 2, 3, 4, 5, 6, 8):
        if padded_out(colors * s * s) == out_channels:
            return scale_from_channels(out_channels, colors, hint, extra=out_channels - colors * s * s, arch=arch)
    raise KeyMismatch(f"{arch}: {out_channels} output channels before PixelShuffle fit no scale "
                      f"for {colors} colour channels (ET layout)")


def _check_pad(pad: str) -> None:
    if pad not in PADS:
        raise ValueError(f"pad must be one of {PADS}, got {pad!r}")


# ---- reading a model ------------------------------------------------------------------------

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_}
_CLAMP_FUNCS = {torch.clamp, torch.clip, torch.clamp_}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_SHUFFLE_FUNCS = {F.pixel_shuffle, torch.pixel_shuffle}


def extract_chain(model: nn.Module) -> PlainChain:
    """Read a plain SR network (see module doc) into a `PlainChain`; refuse anything else."""
    name = type(model).__name__
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - tracing errors come in many types
        raise NotTransformable(f"cannot trace {name} for the Equivalent Transformation: {e}") from None
    modules = dict(gm.named_modules())
    steps: list[ConvStep] = []
    kind: dict[fx.Node, str] = {}  # input | rep | chain | res | shuffled
    head: fx.Node | None = None  # node holding the chain's current value
    rep_factor = residual_node = None
    scale = None
    clamped = False
    acted: set[int] = set()

    def bad(node: fx.Node, why: str) -> NotTransformable:
        return NotTransformable(f"{name} is not a plain Conv/ReLU/PReLU chain with a repeat_interleave residual: "
                                f"{why} at `{node.format_node()}`")

    def is_head(a: Any) -> bool:
        return isinstance(a, fx.Node) and (a is head or (head is None and kind.get(a) == "input"))

    def set_act(node: fx.Node, act: str, slopes: Tensor | None = None) -> None:
        nonlocal head
        if not steps or node.args[0] is not head or kind.get(head) != "chain" or len(steps) - 1 in acted:
            raise bad(node, f"{act} is not directly after a conv")
        steps[-1].act, steps[-1].slopes = act, slopes
        acted.add(len(steps) - 1)
        kind[node], head = "chain", node

    for node in gm.graph.nodes:
        op, tgt = node.op, node.target
        if op == "placeholder":
            if any(k == "input" for k in kind.values()):
                raise bad(node, "more than one input")
            kind[node] = "input"
        elif op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or kind.get(out) != "shuffled":
                raise bad(node, "the output is not PixelShuffle(...) (optionally clamped)")
        elif op == "call_module":
            m = modules[tgt]
            if isinstance(m, nn.Conv2d):
                if not is_head(node.args[0]) or kind.get(node.args[0]) not in ("chain", "input"):
                    raise bad(node, "conv input is not the previous layer's output")
                steps.append(_conv_step(m, node, bad))
                kind[node], head = "chain", node
            elif isinstance(m, nn.ReLU):
                set_act(node, "relu")
            elif isinstance(m, nn.PReLU):
                set_act(node, "prelu", m.weight.detach().clone())
            elif isinstance(m, nn.Identity):
                kind[node] = kind.get(node.args[0], "?")
                if node.args[0] is head:
                    head = node
            elif isinstance(m, nn.PixelShuffle):
                scale = _shuffle(node, m.upscale_factor, kind, head, bad)
            elif isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 1.0):
                clamped = _clamp(node, kind, head, clamped, bad)
                if node.args[0] is head:
                    head = node
            else:
                raise bad(node, f"unsupported module {type(m).__name__}")
        elif op in ("call_function", "call_method"):
            fn = tgt if op == "call_function" else None
            meth = tgt if op == "call_method" else None
            if fn in _RELU_FUNCS or meth in ("relu", "relu_"):
                set_act(node, "relu")
            elif fn is torch.repeat_interleave or meth == "repeat_interleave":
                if kind.get(node.args[0]) != "input":
                    raise bad(node, "repeat_interleave of something other than the input")
                r = node.args[1] if len(node.args) > 1 else node.kwargs.get("repeats")
                dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
                if not isinstance(r, int) or dim != 1:
                    raise bad(node, "repeat_interleave must repeat a constant number of times along dim=1")
                kind[node], rep_factor = "rep", r
            elif fn in _ADD_FUNCS or meth == "add":
                a, b = node.args[:2]
                if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2:
                    raise bad(node, "add with alpha")
                if kind.get(b) == "chain" and b is head:
                    a, b = b, a
                if not (a is head and kind.get(a) == "chain" and kind.get(b) in ("rep", "input")):
                    raise bad(node, "the only addition allowed is chain(x) + repeat_interleave(x)")
                if residual_node is not None:
                    raise bad(node, "a second residual")
                if kind[b] == "input":
                    rep_factor = 0  # broadcast add of a single-channel input
                residual_node = node
                kind[node], head = "res", node
            elif fn in _SHUFFLE_FUNCS:
                scale = _shuffle(node, node.args[1], kind, head, bad)
            elif fn in _CLAMP_FUNCS or meth in ("clamp", "clip", "clamp_"):
                lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
                hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
                if (lo, hi) != (0, 1):
                    raise bad(node, f"clamp to ({lo}, {hi}); only (0, 1) is supported")
                clamped = _clamp(node, kind, head, clamped, bad)
                if node.args[0] is head:
                    head = node
            else:
                raise bad(node, f"unsupported operation {getattr(tgt, '__name__', tgt)}")
        else:
            raise bad(node, f"unsupported node kind {op}")

    if not steps or scale is None:
        raise NotTransformable(f"{name}: no conv chain followed by PixelShuffle found")
    colors = steps[0].in_channels
    last = steps[-1]
    if last.out_channels != colors * scale * scale:
        raise NotTransformable(f"{name}: last conv has {last.out_channels} channels, expected {colors}*{scale}^2")
    residual = residual_node is not None
    if residual and not (rep_factor == scale * scale or (rep_factor == 0 and colors == 1)):
        raise NotTransformable(f"{name}: residual repeats the input {rep_factor}x, expected {scale * scale}x")
    for i, (a, b) in enumerate(zip(steps, steps[1:])):
        if a.out_channels != b.in_channels:
            raise NotTransformable(f"{name}: conv {i} gives {a.out_channels} channels, conv {i + 1} takes {b.in_channels}")
    return PlainChain(steps, colors, scale, residual, clamped)


def _conv_step(m: nn.Conv2d, node: fx.Node, bad: Callable) -> ConvStep:
    kh, kw = m.kernel_size
    if m.stride != (1, 1) or m.dilation != (1, 1) or m.padding_mode != "zeros":
        raise bad(node, "conv must have stride 1, dilation 1 and zero padding")
    if kh % 2 == 0 or kw % 2 == 0 or (m.padding != "same" and tuple(m.padding) != (kh // 2, kw // 2)):
        raise bad(node, "conv must be odd-sized and 'same'-padded")
    w = m.weight.detach()
    if m.groups > 1:
        og, ig = m.out_channels // m.groups, m.in_channels // m.groups
        dense = torch.zeros(m.out_channels, m.in_channels, kh, kw, dtype=w.dtype, device=w.device)
        for g in range(m.groups):
            dense[g * og:(g + 1) * og, g * ig:(g + 1) * ig] = w[g * og:(g + 1) * og]
        w = dense
    b = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels, dtype=w.dtype, device=w.device)
    return ConvStep(w.clone(), b.clone())


def _shuffle(node, factor, kind, head, bad) -> int:
    src = node.args[0]
    if not isinstance(factor, int) or not (src is head and kind.get(src) in ("chain", "res", "clamped")):
        raise bad(node, "PixelShuffle must take the chain's output (+ residual)")
    if any(k == "shuffled" for k in kind.values()):
        raise bad(node, "a second PixelShuffle")
    kind[node] = "shuffled"
    return factor


def _clamp(node, kind, head, clamped, bad) -> bool:
    src = node.args[0]
    k = kind.get(src)
    if clamped or not (k == "shuffled" or (src is head and k in ("chain", "res"))):
        raise bad(node, "clamp must be the last operation before or after PixelShuffle")
    # a clamped chain value can only be pixel-shuffled (not added to, not convolved)
    kind[node] = "shuffled" if k == "shuffled" else "clamped"
    return True


# ---- the transformation ---------------------------------------------------------------------

def et_steps(chain: PlainChain, pad: str = "official") -> tuple[list[ConvStep], int]:
    """The ET'd layers (last two: output conv computing 1 - y, 1x1 clip) and the number of
    output channels to keep before PixelShuffle."""
    _check_pad(pad)
    c, s2 = chain.colors, chain.scale ** 2
    last = chain.steps[-1]
    if last.act != "linear":
        raise NotTransformable(f"the last conv is followed by {last.act}; the ET needs a linear output conv")
    new: list[ConvStep] = []
    carry = list(range(c))  # where input colour j sits in the current layer's input
    in_now = c
    for st in chain.steps[:-1]:
        w_out, kh, kw = st.out_channels, st.weight.shape[2], st.weight.shape[3]
        extra = carried_extra(w_out, c, pad) if chain.residual else 0
        w = st.weight.new_zeros(w_out + extra, in_now, kh, kw)
        w[:w_out, :st.in_channels] = st.weight
        b = st.bias.new_zeros(w_out + extra)
        b[:w_out] = st.bias
        if chain.residual:
            dst = [w_out + extra - c + j for j in range(c)]
            for j in range(c):
                w[dst[j], carry[j], kh // 2, kw // 2] = 1.0
            carry = dst
        slopes = st.slopes
        if st.act == "prelu" and slopes is not None and slopes.numel() > 1:
            slopes = torch.cat([slopes, slopes.new_zeros(extra)])
        new.append(ConvStep(w, b, st.act, slopes))
        in_now = w_out + extra
    out = last.out_channels
    out_p = padded_out(out, pad)
    kh, kw = last.weight.shape[2:]
    w = last.weight.new_zeros(out_p, in_now, kh, kw)
    w[:out, :last.in_channels] = -last.weight
    b = last.bias.new_ones(out_p)
    b[:out] = 1.0 - last.bias
    if chain.residual:
        for o in range(out):
            w[o, carry[o // s2 if c > 1 else 0], kh // 2, kw // 2] -= 1.0
    new.append(ConvStep(w, b, "relu"))
    eye = torch.eye(out_p, dtype=w.dtype, device=w.device).reshape(out_p, out_p, 1, 1)
    new.append(ConvStep(-eye, torch.ones(out_p, dtype=w.dtype, device=w.device), "relu"))
    return new, out


class ETNet(nn.Module):
    """Generic result of the ET: ``body`` of (conv, act) blocks, keep ``out_channels``,
    PixelShuffle. Used when no family layout is registered for the source model."""

    clamps_output = True  # ReLU + 1x1 clip tail: output is clamp(y, 0, 1)

    def __init__(self, steps: list[ConvStep], out_channels: int, scale: int):
        super().__init__()
        blocks = []
        for st in steps:
            kh, kw = st.weight.shape[2:]
            layers: list[nn.Module] = [nn.Conv2d(st.in_channels, st.out_channels, (kh, kw), padding=(kh // 2, kw // 2))]
            if st.act == "relu":
                layers.append(nn.ReLU())
            elif st.act == "prelu":
                layers.append(nn.PReLU(num_parameters=st.slopes.numel() if st.slopes is not None else 1))
            blocks.append(nn.Sequential(*layers))
        self.body = nn.Sequential(*blocks)
        self.out_channels, self.scale = out_channels, scale
        self.upsampler = nn.PixelShuffle(scale)
        fill_module(self, steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.body[-1][0].out_channels != self.out_channels:
            y = y[:, : self.out_channels]
        return self.upsampler(y)


@torch.no_grad()
def fill_module(module: nn.Module, steps: list[ConvStep]) -> None:
    """Copy `steps` into the Conv2d / PReLU leaves of `module`, in module order."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    prelus = [m for m in module.modules() if isinstance(m, nn.PReLU)]
    want_prelus = [st for st in steps if st.act == "prelu"]
    if len(convs) != len(steps) or len(prelus) != len(want_prelus):
        raise NotTransformable(f"{type(module).__name__} has {len(convs)} convs / {len(prelus)} PReLUs; "
                               f"the ET gives {len(steps)} / {len(want_prelus)}")
    for conv, st in zip(convs, steps):
        if conv.weight.shape != st.weight.shape or conv.groups != 1:
            raise NotTransformable(f"{type(module).__name__}: conv of shape {tuple(conv.weight.shape)} "
                                   f"cannot hold {tuple(st.weight.shape)}")
        conv.weight.copy_(st.weight)
        conv.bias.copy_(st.bias)
    for prelu, st in zip(prelus, want_prelus):
        slopes = st.slopes if st.slopes is not None else torch.full((1,), 0.25)
        if prelu.weight.numel() != slopes.numel():
            raise NotTransformable(f"{type(module).__name__}: PReLU with {prelu.weight.numel()} slopes "
                                   f"cannot hold {slopes.numel()}")
        prelu.weight.copy_(slopes.reshape(prelu.weight.shape))


# ---- family layouts -------------------------------------------------------------------------

@dataclass(frozen=True)
class ETLayout:
    """How a known source module class comes out of the ET: as architecture ``target``
    (form ``target_form``), built with ``hyperparams(chain)``."""

    source: type
    sources: tuple[tuple[str, str], ...]  # registry (arch, form) pairs this layout serves
    target: Architecture
    target_form: str
    hyperparams: Callable[[PlainChain], dict]

    @property
    def target_arch(self) -> str:
        return self.target.name


_LAYOUTS: list[ETLayout] = []


def register_et_layout(layout: ETLayout) -> ETLayout:
    _LAYOUTS.append(layout)
    return layout


def layouts() -> tuple[ETLayout, ...]:
    """The layouts registered so far (`edgesr.registry.et_target` loads every family first)."""
    return tuple(_LAYOUTS)


def _layout_for(model: nn.Module) -> ETLayout | None:
    for lay in _LAYOUTS:
        if type(model) is lay.source:
            return lay
    return None


# ---- public entry points --------------------------------------------------------------------

def equivalent_transform(model: nn.Module, spec: "Spec | None" = None, *, pad: str = "official",
                         layout: str = "auto", check: bool = True) -> nn.Module:
    """Return a Conv + ReLU/PReLU + PixelShuffle network equal to ``clamp(model(x), 0, 1)``
    for inputs in [0, 1]; `model` is left untouched.

    spec: the model's `Spec` if known (its scale / channels are cross-checked, its input
    range must be [0, 1], its size rules shape the self-check probe).
    pad: "official" (layout of the ETDS repo's ET checkpoints) or "none".
    layout: "auto" builds the family's official ET module when one is registered and fits
    (else an `ETNet`); "generic" always builds an `ETNet`.
    check: run both networks on a random probe and raise if they differ by > 1e-4.
    """
    return _transform(model, spec, pad, layout, check)[0]


def equivalent_transform_loaded(loaded: LoadedModel, *, pad: str = "official", check: bool = True) -> LoadedModel:
    """ET of a `registry.LoadedModel`: module, `Spec` and registry entry of the result."""
    module, hp, lay, chain = _transform(loaded.module, loaded.spec, pad, "auto", check)
    if lay is None or hp is None:
        spec = replace(loaded.spec, form="deploy", variant=None, value_range=(0.0, 1.0),
                       hyperparams={**loaded.spec.hyperparams, "equivalent_transform": pad},
                       receptive_field=sum(max(st.weight.shape[-2:]) // 2 for st in chain.steps))
        return LoadedModel(module, spec, loaded.arch, loaded.state_dict_keys)
    arch = lay.target
    spec = arch.describe(hp, lay.target_form)
    variant = match_variant(arch, hp)
    if variant:
        spec = replace(spec, variant=variant)
    return LoadedModel(module, spec, arch, loaded.state_dict_keys)


def _transform(model, spec, pad, layout, check):
    _check_pad(pad)
    if layout not in ("auto", "generic"):
        raise ValueError(f"layout must be 'auto' or 'generic', got {layout!r}")
    if spec is not None and (spec.value_range[0] < 0 or spec.value_range[1] != 1):
        raise NotTransformable(f"the ET needs inputs and outputs in [0, 1]; this model uses {spec.value_range}")
    src = _without_training_blocks(model)
    chain = extract_chain(src)
    if spec is not None and (spec.scale != chain.scale or spec.in_channels != chain.colors):
        raise NotTransformable(f"spec says x{spec.scale} with {spec.in_channels} channels, the network is "
                               f"x{chain.scale} with {chain.colors}")
    steps, keep = et_steps(chain, pad)
    result, hp, lay = None, None, None
    if layout == "auto" and (lay := _layout_for(src)) is not None:
        hp = lay.hyperparams(chain)
        try:
            result = lay.target.build(hp, lay.target_form)
            fill_module(result, steps)
        except NotTransformable:
            result, hp, lay = None, None, None
    if result is None:
        result = ETNet(steps, keep, chain.scale)
    p = next(model.parameters(), None)
    if p is not None:
        result = result.to(device=p.device, dtype=p.dtype)
    result.eval()
    if check:
        err = _max_error(src, result, chain, spec)
        if not err <= 1e-4:
            raise NotTransformable(f"ET self-check failed: max |clamp(model) - ET(model)| = {err:.3g} "
                                   f"({type(src).__name__} -> {type(result).__name__})")
    return result, hp, lay, chain


def _without_training_blocks(model: nn.Module) -> nn.Module:
    """A copy with inner training-only blocks (e.g. ECB) in deploy form; the top level is kept."""
    model = copy.deepcopy(model).eval()

    def swap(mod: nn.Module) -> None:
        for name, child in list(mod.named_children()):
            if isinstance(child, TrainingBlock):
                setattr(mod, name, child.reparameterize())
            else:
                swap(child)

    swap(model)
    return model


@torch.no_grad()
def _max_error(src: nn.Module, et: nn.Module, chain: PlainChain, spec) -> float:
    mult = max(1, spec.size_multiple if spec is not None else 1)
    side = max(round_up(17, mult), round_up(spec.min_size if spec is not None else 1, mult))
    p = next(src.parameters(), None)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, chain.colors, side, side + mult, generator=g)
    x[0, :, :3] = 0.0  # exact 0 and 1 inputs are in range too
    x[1, :, :3] = 1.0
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    ref = src(x).clamp(0, 1)
    return float((ref - et(x)).abs().max())
