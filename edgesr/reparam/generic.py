"""Generic reparameterization: collapse every linear sub-graph between non-linearities into one conv.

For models edgesr has no family entry for. The model is captured with torch.fx (the whole
model, or, where that fails, each submodule that traces on its own); every operator is
classed as *affine and translation invariant* (stride-1 convs, eval BatchNorm, constant
pads, adds of tensors, adds/products with per-channel constants, channel concat/slice,
identity-like ops) or not. Affine operators between non-affine ones form regions; a region
with one input tensor is, on an unbounded image, a convolution plus a bias. Its kernel and
bias are read off by probing the region in float64 with one impulse per input channel
(so parameter-only sub-graphs such as ECB's ``scale * sobel_mask`` are folded for free,
whatever the wiring).

Borders are where this can go wrong: a conv whose input was zero-padded *after* a biased op
(e.g. a plain zero pad after a biased 1x1) is not one zero-padded conv of the region input.
So each region is checked in float64 at tiny and odd sizes (1x1, non-square) against its
probed conv; where that fails, every intermediate node is checked the same way, and the
region is split before the first node whose border disagrees, at the dominator of that node
nearest the region input from which it is exact (that tensor is kept), and the parts are
analysed again. Only regions that are exact at every size survive; each is then verified in
fp32 against the original sub-graph, and the whole rewritten model against the original.
A region that fails is left as it was and reported with the reason.

Nothing here looks at names: ECB, RepVGG, Conv3XC, RRRB, SESR and RepRFN blocks collapse
because they are affine, not because they are recognised.

Over 500 lines on purpose: one pass (capture, classify operators, collapse regions, verify) whose
stages share the captured graph and region bookkeeping.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import EdgesrError
from .copying import clone_module

# float64 agreement (relative to max(1, |ref|)) that counts as "the same function". Not 1e-12: fx
# snapshots buffer-derived values (e.g. sqrt(running_var + eps)) as constants at trace time, in the
# model's fp32, so float64 analysis inherits fp32-rounded constants. A border that is really wrong
# (zero padding where the bias belongs) is off by the size of the bias, orders of magnitude more.
EXACT_TOL64 = 1e-7
WHOLE_TOL64 = 1e-6  # whole model, float64, relative: per-layer EXACT_TOL64 compounded over depth
ANALYSIS_SIZES = ((1, 1), (2, 5), (5, 3), (7, 8), (11, 6))
VERIFY_SIZES = ((1, 1), (2, 5), (7, 3), (13, 17))
PROBE_CHUNK = 16  # impulses per probe batch: bounds probe memory whatever the channel count


class GenericReparamError(EdgesrError):
    """The generic pass could not run at all (not raised for regions it merely leaves alone)."""


@dataclass
class GenericReparamResult:
    """`module`: a new module (the caller's is untouched); `report`: JSON-safe description."""

    module: nn.Module
    report: dict
    regions: list[dict] = field(default_factory=list)

    @property
    def collapsed(self) -> list[dict]:
        return [r for r in self.regions if r["status"] == "collapsed"]

    @property
    def left(self) -> list[dict]:
        return [r for r in self.regions if r["status"] != "collapsed"]


# ---- public entry point --------------------------------------------------------------------

def collapse_linear(module: nn.Module, example: torch.Tensor, *, tol: float = 1e-5,
                    only_if_cheaper: bool = True, deploy_hooks: bool = True) -> GenericReparamResult:
    """Collapse every affine sub-graph of `module` into one conv, verified; see the module doc.

    `example` is one realistic input (NCHW); it fixes channel counts, gives activation
    statistics for the fp32 checks and is the input of the whole-model check. `tol` bounds
    fp32 max |difference| / max(1, max |reference|) of each collapsed region. With
    `only_if_cheaper`, a region whose single conv would need more MACs per pixel than the
    original operators (e.g. a narrow 5x5 -> 1x1 pair) is left alone and reported. With
    `deploy_hooks`, the author's own hooks (`switch_to_deploy`, `reparameterize`, ...; see
    edgesr.reparam.hooks) run first and are kept only where they verify.
    """
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise GenericReparamError("collapse_linear needs an NCHW example tensor")
    example = example.detach()
    original = clone_module(module).eval()
    try:
        with torch.no_grad():
            original(example)
    except Exception as e:  # noqa: BLE001 - user code: say what failed, in one line
        raise GenericReparamError(f"the model does not run on the example {tuple(example.shape)}: "
                                  f"{_one_line(e)}") from None
    hooks = None
    if deploy_hooks:
        from .hooks import run_deploy_hooks

        start, hooks = run_deploy_hooks(module, example, tol=tol)
    else:
        start = clone_module(module).eval()
    work = clone_module(start)
    ctx = _Pass(tol=tol, only_if_cheaper=only_if_cheaper)
    try:
        gm = _trace(work)
    except Exception as e:  # noqa: BLE001 - any tracing failure means: try submodules instead
        capture: dict[str, Any] = {"method": "fx-per-module", "whole_model_trace_error": _one_line(e)}
        new, traced, untraced = _collapse_per_module(work, example, ctx)
        capture.update(traced=traced, untraced=untraced)
    else:
        capture = {"method": "fx"}
        new = _collapse_graph(gm, (example,), ctx, scope="")
    # the collapse is judged against the model it started from (the hooks were judged on their own)
    if not any(r["status"] == "collapsed" for r in ctx.reports):
        # Nothing was rewritten: the model it started from is the result, nothing to verify (the
        # float64 whole-model runs were most of this pass's time on models with nothing to merge).
        new = start
        whole = {"ok": True, "sizes": [], "max_abs_fp32": 0.0, "ref_max_fp32": None, "max_rel_fp64": 0.0,
                 "skipped": [], "note": "nothing collapsed: the model is the one the pass started from"}
    else:
        whole = _verify_whole(start, new, _exact_twin(new, ctx), example, tol)
    if not whole["ok"]:
        # Every region verified alone, yet the model disagrees: keep the uncollapsed model, say so.
        for r in ctx.reports:
            if r["status"] == "collapsed":
                r["status"], r["reason"] = "reverted", "whole-model verification failed"
        new = start
    report = _report(original, new, example, ctx.reports, capture, whole, tol)
    report["splits"] = ctx.splits
    report["deploy_hooks"] = hooks
    return GenericReparamResult(module=new, report=report, regions=ctx.reports)


@dataclass
class _Pass:
    tol: float
    only_if_cheaper: bool
    reports: list[dict] = field(default_factory=list)
    exact64: dict[str, nn.Module] = field(default_factory=dict)  # module path -> float64 twin
    splits: list[dict] = field(default_factory=list)  # where a region was split, and why


def _exact_twin(new: nn.Module, ctx: _Pass) -> nn.Module | None:
    """`new` in float64 with each collapsed conv holding its float64 (unrounded) kernel."""
    try:
        twin = clone_module(new).double()
        for path, m64 in ctx.exact64.items():
            parent, _, name = path.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, name, copy.deepcopy(m64))
    except Exception:  # noqa: BLE001 - float64 twin unavailable: the check falls back to fp32
        return None
    return twin


# ---- capture ------------------------------------------------------------------------------

class _Tracer(fx.Tracer):
    """torch.fx tracing that also follows modules the model calls without owning them.

    Research code often keeps an activation in a module-level global (``act = nn.LeakyReLU()``)
    and calls it from forward; plain symbolic_trace refuses such a call ("module is not
    installed as a submodule"). Those modules are traced through instead (their forward
    becomes functional calls), which is what they compute.
    """

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        try:
            self.path_of_module(m)
        except NameError:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def _trace(module: nn.Module) -> fx.GraphModule:
    """Trace a throwaway copy: a forward may assign attributes (``self.mean = self.mean.type_as(x)``),
    which during tracing would leave proxies in the module the graph then reads from."""
    traced_on = clone_module(module)
    graph = _Tracer().trace(traced_on)
    root = clone_module(module)
    for n in graph.nodes:  # constants the tracer itself created (_tensor_constantN) live on traced_on
        if n.op == "get_attr" and not isinstance(_fetch_attr_or_none(root, n.target), (torch.Tensor, nn.Module)):
            _set_attr(root, n.target, _fetch_attr(traced_on, n.target))
    return fx.GraphModule(root, graph, type(module).__name__)


def _fetch_attr_or_none(root: nn.Module, target: str) -> Any:
    try:
        return _fetch_attr(root, target)
    except AttributeError:
        return None


def _set_attr(root: nn.Module, target: str, value: Any) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, value)


# ---- capture fallback: submodule by submodule ----------------------------------------------

def _collapse_per_module(root: nn.Module, example: torch.Tensor, ctx: _Pass) -> tuple[nn.Module, list[str], list[dict]]:
    """Trace each child that traces on its own (recursing into those that do not)."""
    calls = _record_calls(root, example)
    traced: list[str] = []
    untraced: list[dict] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            path = f"{prefix}{name}"
            if _is_torch_leaf(child):
                continue
            call = calls.get(id(child))
            if call is None or call is _KWARGS:
                if call is _KWARGS:
                    untraced.append({"scope": path, "error": "called with keyword arguments"})
                visit(child, path + ".")  # containers (ModuleList) are never called themselves
                continue
            try:
                gm = _trace(child)
            except Exception as e:  # noqa: BLE001
                untraced.append({"scope": path, "error": _one_line(e)})
                visit(child, path + ".")
                continue
            traced.append(path)
            setattr(parent, name, _collapse_graph(gm, call, ctx, scope=path))

    visit(root, "")
    return root, traced, untraced


_KWARGS = object()


def _record_calls(root: nn.Module, example: torch.Tensor) -> dict[int, Any]:
    """First positional inputs of every submodule call on the example (or _KWARGS)."""
    calls: dict[int, Any] = {}
    handles = []

    def hook(mod, args, kwargs):
        if id(mod) not in calls:
            calls[id(mod)] = _KWARGS if kwargs else tuple(
                a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)

    for m in root.modules():
        if m is not root:
            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            root(example)
    finally:
        for h in handles:
            h.remove()
    return calls


def _is_torch_leaf(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.nn") and not isinstance(m, (nn.Sequential, nn.ModuleList,
                                                                              nn.ModuleDict))


# ---- graph analysis ------------------------------------------------------------------------

@dataclass
class _Meta:
    """What the example run saw at a node."""

    shape: tuple[int, ...] | None = None  # tensors only
    dtype: torch.dtype | None = None
    mean: torch.Tensor | None = None  # per channel, 4-D float tensors only
    std: torch.Tensor | None = None
    is_tuple: bool = False

    def dims(self) -> tuple[int, ...]:
        """`shape`, where the analysis knows a tensor was seen."""
        if self.shape is None:
            raise TypeError("no tensor was seen at this node")
        return self.shape


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.meta: dict[fx.Node, _Meta] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        m = _Meta()
        if isinstance(out, torch.Tensor):
            m.shape, m.dtype = tuple(out.shape), out.dtype
            if out.dim() == 4 and out.is_floating_point() and out.numel():
                v = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)
                m.mean, m.std = v.mean(1), v.std(1, unbiased=False) if v.shape[1] > 1 else torch.zeros(v.shape[0])
        elif isinstance(out, (tuple, list)):
            m.is_tuple = True
        self.meta[n] = m
        return out


@dataclass
class _Win:
    """Output row i of a node reads region-input rows i+lo .. i+hi (zero-extended); its height is H + d."""

    lo_h: int = 0
    hi_h: int = 0
    d_h: int = 0
    lo_w: int = 0
    hi_w: int = 0
    d_w: int = 0

    def union(self, other: "_Win") -> "_Win | None":
        if (self.d_h, self.d_w) != (other.d_h, other.d_w):
            return None
        return _Win(min(self.lo_h, other.lo_h), max(self.hi_h, other.hi_h), self.d_h,
                    min(self.lo_w, other.lo_w), max(self.hi_w, other.hi_w), self.d_w)

    def shifted(self, top: int, bottom: int, left: int, right: int, kh: int = 1, kw: int = 1,
                dh: int = 1, dw: int = 1) -> "_Win":
        """After zero-padding by (top, bottom, left, right) and a valid (kh, kw) conv with dilation (dh, dw)."""
        eh, ew = dh * (kh - 1), dw * (kw - 1)
        return _Win(self.lo_h - top, self.hi_h - top + eh, self.d_h + top + bottom - eh,
                    self.lo_w - left, self.hi_w - left + ew, self.d_w + left + right - ew)

    @property
    def kernel(self) -> tuple[int, int]:
        return self.hi_h - self.lo_h + 1, self.hi_w - self.lo_w + 1

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding of the region input for a valid conv."""
        return -self.lo_w, self.d_w + self.hi_w, -self.lo_h, self.d_h + self.hi_h


@dataclass
class _Rule:
    kind: str  # conv | bn | add | scale | pad | move (no arithmetic)
    inputs: list[fx.Node]  # input-dependent tensor operands
    window: Callable[[list[_Win]], _Win | None]


_ADD = {operator.add, torch.add, "add", operator.sub, torch.sub, "sub"}
_MUL = {operator.mul, torch.mul, "mul", operator.truediv, torch.div, "div", torch.true_divide}
_IDENTITY_FUNCS = {torch.clone, "clone", "contiguous"}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.Dropout3d, nn.AlphaDropout)
_CONV_FUNCS = {torch.conv2d, F.conv2d}


class _Graph:
    """Classification of one traced graph's nodes (affine or not) and its regions."""

    def __init__(self, gm: fx.GraphModule, meta: dict[fx.Node, _Meta]):
        self.gm, self.meta = gm, meta
        self.modules = dict(gm.named_modules())
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.dep: set[fx.Node] = set()  # depends on a placeholder
        for n in gm.graph.nodes:
            if n.op == "placeholder" or any(a in self.dep for a in n.all_input_nodes):
                self.dep.add(n)
        self.rules: dict[fx.Node, _Rule] = {}
        for n in gm.graph.nodes:
            if n in self.dep and n.op in ("call_function", "call_method", "call_module"):
                rule = self._rule(n)
                if rule is not None:
                    self.rules[n] = rule

    # -- operator semantics --

    def _is4d(self, n: Any) -> bool:
        m = self.meta.get(n) if isinstance(n, fx.Node) else None
        return bool(m and m.shape is not None and len(m.shape) == 4 and m.dtype is not None
                    and m.dtype.is_floating_point)

    def _const(self, a: Any) -> bool:
        return not (isinstance(a, fx.Node) and a in self.dep) and _no_nodes_inside(a, self.dep)

    def _uniform_const(self, a: Any) -> bool:
        """A constant that is the same at every pixel (a number or a (1, C, 1, 1)-like tensor)."""
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            return True
        if isinstance(a, fx.Node) and a not in self.dep:
            m = self.meta.get(a)
            if m is None or m.shape is None:
                return False
            s = m.shape
            if len(s) <= 1:
                return math.prod(s) == 1
            return len(s) <= 4 and s[-1] == 1 and s[-2] == 1 and (len(s) < 4 or s[0] == 1)
        return False

    def _rule(self, n: fx.Node) -> _Rule | None:
        if not self._is4d(n) and not self.meta.get(n, _Meta()).is_tuple:
            return None
        t = n.target
        if n.op == "call_module":
            return self._module_rule(n, self.modules.get(t))
        name = t if n.op == "call_method" else None
        if n.op == "call_method" and isinstance(t, str) and t.endswith("_"):
            return None  # in-place methods: aliasing, never collapsed
        args, kw = list(n.args), dict(n.kwargs)
        same = lambda w: w[0]  # noqa: E731
        if t in _CONV_FUNCS:
            x, w = _arg(args, kw, 0, "input"), _arg(args, kw, 1, "weight")
            b = _arg(args, kw, 2, "bias", None)
            if not (self._is4d(x) and x in self.dep and self._const(w) and self._const(b)):
                return None
            wm = self.meta.get(w)
            if wm is None or wm.shape is None or len(wm.shape) != 4:
                return None
            return self._conv_rule(x, wm.shape[-2:], _arg(args, kw, 3, "stride", 1), _arg(args, kw, 4, "padding", 0),
                                   _arg(args, kw, 5, "dilation", 1))
        if t in _ADD or name in ("add", "sub"):
            a, b = _arg(args, kw, 0, "input"), _arg(args, kw, 1, "other")
            alpha = kw.get("alpha", 1)
            if not isinstance(alpha, (int, float)):
                return None
            tensors = [v for v in (a, b) if isinstance(v, fx.Node) and v in self.dep]
            if not all(self._is4d(v) for v in tensors):
                return None
            if len(tensors) == 2:
                return _Rule("add", tensors, lambda w: w[0].union(w[1]))
            other = b if tensors[0] is a else a
            if isinstance(other, (int, float)) and other == 0 and tensors[0] is a:
                return _Rule("move", tensors, same)  # x + 0 (e.g. an absent optional branch)
            return _Rule("scale", tensors, same) if self._uniform_const(other) else None
        if t in _MUL or name in ("mul", "div"):
            a, b = _arg(args, kw, 0, "input"), _arg(args, kw, 1, "other")
            if kw.get("rounding_mode") is not None:
                return None
            tensors = [v for v in (a, b) if isinstance(v, fx.Node) and v in self.dep]
            if len(tensors) != 1 or not self._is4d(tensors[0]):
                return None
            other = b if tensors[0] is a else a
            divides = t in (operator.truediv, torch.div, torch.true_divide) or name == "div"
            if divides and tensors[0] is not a:
                return None  # constant / tensor is not affine
            if isinstance(other, (int, float)) and other == 1:
                return _Rule("move", tensors, same)
            return _Rule("scale", tensors, same) if self._uniform_const(other) else None
        if t in (operator.neg, torch.neg) or name == "neg" or t in (operator.pos,):
            return _Rule("scale", [args[0]], same) if self._is4d(args[0]) else None
        if t in _IDENTITY_FUNCS or name in _IDENTITY_FUNCS:
            return _Rule("move", [args[0]], same) if self._is4d(args[0]) and not kw else None
        if t is F.dropout or t is F.dropout2d:
            if _arg(args, kw, 2, "training", True) is False and self._is4d(args[0]):
                return _Rule("move", [args[0]], same)
            return None
        if t is F.pad:
            x, pad = _arg(args, kw, 0, "input"), _arg(args, kw, 1, "pad")
            mode, value = _arg(args, kw, 2, "mode", "constant"), _arg(args, kw, 3, "value", None)
            if mode != "constant" or not (value is None or isinstance(value, (int, float))):
                return None
            return self._pad_rule(x, pad)
        if t is F.batch_norm:
            x = _arg(args, kw, 0, "input")
            rest = [_arg(args, kw, i, k, None) for i, k in ((1, "running_mean"), (2, "running_var"),
                                                            (3, "weight"), (4, "bias"))]
            if (self._is4d(x) and _arg(args, kw, 5, "training", False) is False and rest[0] is not None
                    and all(self._const(r) for r in rest)):
                return _Rule("bn", [x], same)
            return None
        if t in (torch.cat, torch.concat, torch.concatenate):
            tensors, dim = _arg(args, kw, 0, "tensors"), _arg(args, kw, 1, "dim", 0)
            if dim not in (1, -3) or not isinstance(tensors, (list, tuple)):
                return None
            if not all(isinstance(v, fx.Node) and v in self.dep and self._is4d(v) for v in tensors):
                return None
            return _Rule("move", list(tensors), _union_all)
        if t in (torch.chunk, torch.split) or name in ("chunk", "split"):
            x, dim = args[0], _arg(args, kw, 2, "dim", 0)
            return _Rule("move", [x], same) if self._is4d(x) and dim in (1, -3) else None
        if t is torch.repeat_interleave or name == "repeat_interleave":
            x, rep, dim = args[0], _arg(args, kw, 1, "repeats"), _arg(args, kw, 2, "dim", None)
            ok = self._is4d(x) and isinstance(rep, int) and dim in (1, -3)
            return _Rule("move", [x], same) if ok else None
        if t is operator.getitem:
            src, idx = args
            if self.meta.get(src, _Meta()).is_tuple and isinstance(idx, int) and src in self.rules:
                return _Rule("move", [src], same)
            return self._slice_rule(src, idx)
        return None

    def _module_rule(self, n: fx.Node, m: nn.Module | None) -> _Rule | None:
        if m is None or len(n.args) != 1 or n.kwargs or not self._is4d(n.args[0]):
            return None
        x = n.args[0]
        if type(m) is nn.Conv2d:  # exact type: subclasses may change forward
            if m.padding_mode != "zeros":
                return None
            return self._conv_rule(x, m.kernel_size, m.stride, m.padding, m.dilation)
        if isinstance(m, nn.BatchNorm2d) and type(m).forward is nn.BatchNorm2d.forward:
            return _Rule("bn", [x], lambda w: w[0]) if (not m.training and m.track_running_stats) else None
        if type(m) in (nn.ZeroPad2d, nn.ConstantPad2d):
            return self._pad_rule(x, m.padding)
        if type(m) in _IDENTITY_MODULES and (isinstance(m, nn.Identity) or not m.training):
            return _Rule("move", [x], lambda w: w[0])
        return None

    def _conv_rule(self, x: fx.Node, k, stride, padding, dilation) -> _Rule | None:
        kh, kw = _pair(k)
        if _pair(stride) != (1, 1):
            return None  # strided convs change the sampling grid: not one conv of the input
        dh, dw = _pair(dilation)
        if padding == "valid":
            pt = pb = pl = pr = 0
        elif padding == "same":
            th, tw = dh * (kh - 1), dw * (kw - 1)
            pt, pb, pl, pr = th // 2, th - th // 2, tw // 2, tw - tw // 2
        else:
            ph, pw = _pair(padding)
            pt = pb = ph
            pl = pr = pw
        if not all(isinstance(v, int) for v in (kh, kw, dh, dw, pt, pb, pl, pr)):
            return None
        return _Rule("conv", [x], lambda w: w[0].shifted(pt, pb, pl, pr, kh, kw, dh, dw))

    def _pad_rule(self, x: Any, pad: Any) -> _Rule | None:
        if not self._is4d(x) or isinstance(pad, fx.Node):
            return None
        pad = tuple(pad) if isinstance(pad, (tuple, list)) else (pad,) * 4
        if not all(isinstance(p, int) for p in pad) or len(pad) not in (2, 4, 6, 8) or any(pad[4:]):
            return None
        l, r, t, b = (tuple(pad) + (0, 0))[:4]
        return _Rule("pad", [x], lambda w: w[0].shifted(t, b, l, r))

    def _slice_rule(self, src: Any, idx: Any) -> _Rule | None:
        """x[:, c0:c1] (channels) and crops x[..., a:-b] with constant ends."""
        if not self._is4d(src):
            return None
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(i is Ellipsis for i in idx) or len(idx) > 4 or not all(isinstance(i, slice) for i in idx):
            return None
        idx = idx + (slice(None),) * (4 - len(idx))
        if idx[0] != slice(None) or not all(isinstance(v, (int, type(None))) for s in idx[1:]
                                            for v in (s.start, s.stop, s.step)):
            return None
        crops = []
        for s in idx[2:]:
            if s.step not in (None, 1) or (s.start or 0) < 0 or (s.stop is not None and s.stop >= 0):
                return None
            crops.append((s.start or 0, -(s.stop or 0)))
        (t, b), (l, r) = crops
        return _Rule("pad", [src], lambda w: w[0].shifted(-t, -b, -l, -r))

    def tensor_inputs(self, n: fx.Node) -> list[fx.Node]:
        """Tensor operands of `n`, looking through tuple-producing nodes (chunk/split)."""
        out = []
        for a in self.rules[n].inputs:
            if self._is4d(a) or a not in self.rules:
                out.append(a)
            else:
                out.extend(self.tensor_inputs(a))
        return out

    # -- regions --

    def materialised(self, cuts: set[fx.Node]) -> set[fx.Node]:
        """Nodes whose value must exist as a tensor: region inputs/outputs."""
        mat = set(cuts)
        for n in self.gm.graph.nodes:
            if n.op == "placeholder" or (n in self.dep and n not in self.rules):
                mat.add(n)
            elif n in self.rules and any(u not in self.rules for u in n.users):
                mat.add(n)
        return mat

    def regions(self, mat: set[fx.Node]) -> list["_Region"]:
        outputs = sorted((n for n in mat if n in self.rules), key=self.order.__getitem__)
        cones: dict[fx.Node, tuple[set[fx.Node], set[fx.Node]]] = {}
        for o in outputs:
            inner, inputs, stack = {o}, set(), [o]
            while stack:
                n = stack.pop()
                for a in self.rules[n].inputs:
                    if a in mat:
                        inputs.add(a)
                    elif a not in inner:
                        inner.add(a)
                        stack.append(a)
            cones[o] = (inner, inputs)
        # outputs whose cones share interior nodes form one region
        parent = {o: o for o in outputs}

        def find(o):
            while parent[o] is not o:
                parent[o] = parent[parent[o]]
                o = parent[o]
            return o

        owner: dict[fx.Node, fx.Node] = {}
        for o in outputs:
            for n in cones[o][0] - {o}:
                if n in owner:
                    parent[find(o)] = find(owner[n])
                else:
                    owner[n] = o
        groups: dict[fx.Node, list[fx.Node]] = {}
        for o in outputs:
            groups.setdefault(find(o), []).append(o)
        out = []
        for outs in groups.values():
            nodes = set().union(*(cones[o][0] for o in outs))
            inputs = set().union(*(cones[o][1] for o in outs))
            at = self.order.__getitem__
            out.append(_Region(self, sorted(nodes, key=at), sorted(inputs, key=at), sorted(outs, key=at)))
        return out


def _union_all(ws: list[_Win]) -> _Win | None:
    acc: _Win | None = ws[0]
    for w in ws[1:]:
        acc = acc.union(w) if acc is not None else None
    return acc


@dataclass
class _Region:
    g: _Graph
    nodes: list[fx.Node]
    inputs: list[fx.Node]
    outputs: list[fx.Node]

    @property
    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            k = self.g.rules[n].kind
            counts[k] = counts.get(k, 0) + 1
        return counts

    def is_candidate(self) -> bool:
        k = self.kinds
        compute = k.get("conv", 0) + k.get("bn", 0) + k.get("add", 0) + k.get("scale", 0)
        return (k.get("conv", 0) + k.get("bn", 0)) >= 1 and compute >= 2

    def windows(self) -> dict[fx.Node, _Win] | None:
        win: dict[fx.Node, _Win] = {self.inputs[0]: _Win()}
        for n in self.nodes:
            w = self.g.rules[n].window([win[a] for a in self.g.rules[n].inputs])
            if w is None:
                return None
            win[n] = w
        return win

    def mixing_cuts(self) -> set[fx.Node]:
        """Nodes to materialise so each remaining region reads one input tensor."""
        deps: dict[fx.Node, frozenset] = {i: frozenset([i]) for i in self.inputs}
        cuts: set[fx.Node] = set()
        for n in self.nodes:
            ins = self.g.rules[n].inputs
            deps[n] = frozenset().union(*(deps[a] for a in ins))
            if len(deps[n]) > 1 and all(len(deps[a]) == 1 for a in ins):
                cuts.add(n)
                cuts.update(a for a in ins if a not in self.inputs)
        return cuts

    def subgraph(self, outputs: Iterable[fx.Node]) -> fx.GraphModule:
        """A GraphModule computing `outputs` from the single region input (constants copied in)."""
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {self.inputs[0]: g.placeholder("x")}
        inside = set(self.nodes)

        def copy_node(n: fx.Node) -> fx.Node:
            if n in env:
                return env[n]
            if n not in inside and n in self.g.dep:
                raise GenericReparamError(f"region reads {n.name} that is not its input")
            for a in n.all_input_nodes:
                copy_node(a)
            env[n] = g.node_copy(n, lambda a: env[a])
            return env[n]

        outs = [copy_node(o) for o in outputs]
        g.output(tuple(outs))
        return fx.GraphModule(self.g.gm, g)

    def module_paths(self) -> list[str]:
        return sorted({p for p in (_node_path(n) for n in self.nodes) if p})

    def params_used(self) -> int:
        seen: dict[int, int] = {}
        for n in self.nodes:
            if n.op == "call_module":
                for p in self.g.modules[n.target].parameters():
                    seen[id(p)] = p.numel()
            for a in _const_ancestors(n, self.g):
                if a.op == "get_attr":
                    v = _fetch_attr(self.g.gm, a.target)
                    if isinstance(v, nn.Parameter):
                        seen[id(v)] = v.numel()
        return sum(seen.values())

    def conv_macs(self) -> int:
        total = 0
        for n in self.nodes:
            if self.g.rules[n].kind != "conv":
                continue
            if n.op == "call_module":
                m = self.g.modules[n.target]
                total += m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            else:
                w = self.g.meta[_arg(list(n.args), dict(n.kwargs), 1, "weight")].dims()
                total += w[0] * w[1] * w[2] * w[3]
        return total


def _node_path(n: fx.Node) -> str:
    """The model's module that `n` belongs to ("" for the root)."""
    if n.op == "call_module":
        return str(n.target)
    stack = n.meta.get("nn_module_stack")
    return str(list(stack.values())[-1][0]) if stack else ""


def _const_ancestors(n: fx.Node, g: "_Graph") -> list[fx.Node]:
    """Parameter-only nodes feeding `n` (nodes added by a rewrite are not constants)."""
    def const(a: fx.Node) -> bool:
        return a in g.order and a not in g.dep

    out, stack, seen = [], [a for a in n.all_input_nodes if const(a)], set()
    while stack:
        a = stack.pop()
        if a in seen:
            continue
        seen.add(a)
        out.append(a)
        stack.extend(b for b in a.all_input_nodes if const(b))
    return out


# ---- probing -------------------------------------------------------------------------------

@dataclass
class _Affine:
    kernel: torch.Tensor  # float64 (out, in, kh, kw), valid conv of the input padded by win.pads
    bias: torch.Tensor  # float64 (out,)
    win: _Win


def _probe(sub64: fx.GraphModule, nodes: list[fx.Node], wins: dict[fx.Node, _Win], cin: int) -> dict[fx.Node, _Affine]:
    """Kernel and bias of every node as a function of the region input, read from impulses."""
    reach = max(max(abs(w.lo_h), abs(w.hi_h), abs(w.d_h), abs(w.lo_w), abs(w.hi_w), abs(w.d_w))
                for w in (wins[n] for n in nodes))
    c0 = 2 * reach + 2
    size = 2 * c0 + 1
    zero = sub64(torch.zeros(1, cin, size, size, dtype=torch.float64))
    resp: list[list[torch.Tensor]] = [[] for _ in nodes]
    for start in range(0, cin, PROBE_CHUNK):
        stop = min(cin, start + PROBE_CHUNK)
        x = torch.zeros(stop - start, cin, size, size, dtype=torch.float64)
        x[torch.arange(stop - start), torch.arange(start, stop), c0, c0] = 1.0
        for i, v in enumerate(sub64(x)):
            resp[i].append(v - zero[i])
    out = {}
    for i, n in enumerate(nodes):
        w = wins[n]
        kh, kw = w.kernel
        rows = c0 - w.lo_h - torch.arange(kh)
        cols = c0 - w.lo_w - torch.arange(kw)
        r = torch.cat(resp[i])  # (cin, cout, H, W)
        if rows.min() < 0 or cols.min() < 0 or rows.max() >= r.shape[2] or cols.max() >= r.shape[3]:
            raise GenericReparamError(f"probe window does not cover {n.name}")
        k = r[:, :, rows][:, :, :, cols].permute(1, 0, 2, 3).contiguous()
        b = zero[i][0, :, int(rows[kh // 2]), int(cols[kw // 2])].clone()
        out[n] = _Affine(k, b, w)
    return out


def _predict(a: _Affine, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(x, a.win.pads), a.kernel) + a.bias.view(1, -1, 1, 1)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |out - ref|, max |ref|)."""
    if out.shape != ref.shape:
        return math.inf, float(ref.abs().max()) if ref.numel() else 0.0
    if not ref.numel():
        return 0.0, 0.0
    return float((out - ref).abs().max()), float(ref.abs().max())


def _exactness(sub64: fx.GraphModule, nodes: list[fx.Node], aff: dict[fx.Node, _Affine], cin: int,
               seed: int) -> tuple[dict[fx.Node, float], list[tuple[int, int]]]:
    """Worst float64 relative error of each node's conv form over the analysis sizes."""
    g = torch.Generator().manual_seed(seed)
    worst = {n: 0.0 for n in nodes}
    ran = []
    for hw in ANALYSIS_SIZES:
        x = torch.randn(2, cin, *hw, generator=g, dtype=torch.float64)
        try:
            vals = sub64(x)
        except Exception:  # noqa: BLE001 - e.g. a valid conv on a 1x1 image: size not applicable
            continue
        ran.append(hw)
        for n, v in zip(nodes, vals):
            try:
                err, scale = _rel(_predict(aff[n], x), v)
            except Exception:  # noqa: BLE001
                err, scale = math.inf, 1.0
            worst[n] = max(worst[n], err / max(1.0, scale))
    return worst, ran


# ---- collapsing one traced graph -----------------------------------------------------------

def _collapse_graph(gm: fx.GraphModule, inputs: tuple, ctx: _Pass, scope: str) -> nn.Module:
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(*inputs)
    g = _Graph(gm, rec.meta)
    cuts: set[fx.Node] = set()
    analysed: dict[tuple, tuple] = {}
    for _ in range(len(gm.graph.nodes) + 1):  # each round materialises >= 1 new node
        mat = g.materialised(cuts)
        regions = g.regions(mat)
        new_cuts: set[fx.Node] = set()
        for r in regions:
            if len(r.inputs) > 1:
                new_cuts |= r.mixing_cuts() - mat
        if not new_cuts:
            for r in regions:
                if len(r.inputs) != 1 or not r.is_candidate():
                    continue
                key = (tuple(r.nodes), r.inputs[0])
                if key not in analysed:
                    analysed[key] = _analyse(r)
                status, payload = analysed[key]
                if status == "cut":
                    new_cuts |= set(payload) - mat
                    ctx.splits.extend(v for k, v in payload.items() if k not in mat and v not in ctx.splits)
        if not new_cuts:
            break
        cuts |= new_cuts
    rewrites = []
    for r in regions:
        if len(r.inputs) != 1 or not r.is_candidate():
            continue
        status, payload = analysed.get((tuple(r.nodes), r.inputs[0]), ("fail", "analysis did not converge"))
        entry = _region_entry(r, scope, len(ctx.reports))
        ctx.reports.append(entry)
        if status != "exact":
            entry.update(status="left", reason=payload if isinstance(payload, str) else "not exact at borders")
            continue
        built = _build_and_verify(r, payload, ctx, entry)
        if built is not None:
            rewrites.append((r, built, entry["id"]))
    replaced: dict[fx.Node, fx.Node] = {}  # a collapsed region's output may be another region's input
    for r, built, idx in rewrites:
        for target, m64 in _rewrite(gm, r, built, f"genrep_{idx}", replaced):
            ctx.exact64[f"{scope}.{target}" if scope else target] = m64
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    _drop_unused_attrs(gm)
    return gm


def _drop_unused_attrs(gm: fx.GraphModule) -> None:
    """Root-level parameters/buffers no get_attr reads any more (folded into a collapsed conv)."""
    used = {str(n.target).split(".")[0] for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}
    for name in [n for n, _ in gm.named_parameters(recurse=False)] + [n for n, _ in gm.named_buffers(recurse=False)]:
        if name not in used:
            delattr(gm, name)


def _analyse(r: _Region) -> tuple[str, Any]:
    """("exact", {node: _Affine}) | ("cut", nodes to materialise) | ("fail", reason)."""
    inp = r.inputs[0]
    if not r.g._is4d(inp) or any(not r.g._is4d(o) for o in r.outputs):
        return "fail", "region input or output is not an NCHW float tensor"
    probed = _probe_region(r, r.outputs)  # the common case: exact, and only outputs matter
    if isinstance(probed, str):
        return "fail", probed
    aff, worst = probed
    if all(e <= EXACT_TOL64 for e in worst.values()):
        return "exact", aff
    probed = _probe_region(r, [n for n in r.nodes if r.g._is4d(n)])  # find where it breaks
    if isinstance(probed, str):
        return "fail", probed
    aff, worst = probed
    bad = {n for n, e in worst.items() if e > EXACT_TOL64}
    cuts: dict[fx.Node, dict] = {}
    doms = _dominators(r)
    for n in worst:
        if n in bad and not any(a in bad for a in r.g.tensor_inputs(n)):
            d = _cut_for(r, n, doms)
            cuts[d] = {"node": n.name, "module": _node_path(n), "split_at": d.name,
                       "reason": f"{n.name} is not one zero-padded conv of {r.inputs[0].name} at the border "
                                 f"(float64 rel. error {worst[n]:.1e})"}
    return "cut", cuts


def _probe_region(r: _Region, nodes: list[fx.Node]) -> tuple[dict[fx.Node, _Affine], dict[fx.Node, float]] | str:
    """Probed conv form and float64 border error of each of `nodes`, or why not."""
    wins = r.windows()
    if wins is None:
        return "branches with different spatial sizes"
    cin = r.g.meta[r.inputs[0]].dims()[1]
    try:
        sub64 = clone_module(r.subgraph(nodes)).double()
        with torch.no_grad():
            aff = _probe(sub64, nodes, wins, cin)
            worst, ran = _exactness(sub64, nodes, aff, cin, seed=len(r.nodes))
    except Exception as e:  # noqa: BLE001 - user operators may refuse float64 etc.: region left as is
        return f"analysis failed: {_one_line(e)}"
    if not ran:
        return "region runs at none of the analysis sizes"
    return aff, worst


def _dominators(r: _Region) -> dict[fx.Node, set[fx.Node]]:
    """Region nodes every path from the input to a node passes through (the node included)."""
    inp = r.inputs[0]
    dom: dict[fx.Node, set[fx.Node]] = {inp: {inp}}
    for n in r.nodes:
        preds = r.g.rules[n].inputs
        dom[n] = set.intersection(*(dom[p] for p in preds)) | {n}
    return dom


def _cut_for(r: _Region, n: fx.Node, doms: dict[fx.Node, set[fx.Node]]) -> fx.Node:
    """Where to split a region whose node `n` is not one zero-padded conv of the region input.

    The split point is the dominator of `n` nearest the region input from which `n` *is*
    exact (e.g. for two stacked RRRBs: the first block's output, not the second block's
    1x1 conv), so what follows it stays one single-input region.
    """
    inp = r.inputs[0]
    order = r.g.order
    for d in sorted(doms[n] - {n, inp}, key=order.__getitem__):
        if not r.g._is4d(d):
            continue
        inner = {m for m in r.nodes if d in doms[m] and m is not d and _reaches(m, n, r)}
        sub = _Region(r.g, sorted(inner, key=order.__getitem__), [d], [n])
        probed = _probe_region(sub, [m for m in sub.nodes if r.g._is4d(m)])
        if not isinstance(probed, str) and all(e <= EXACT_TOL64 for e in probed[1].values()):
            return d
    ins = [a for a in r.g.tensor_inputs(n) if a is not inp]
    return ins[0] if len(ins) == 1 else n


def _reaches(a: fx.Node, b: fx.Node, r: _Region) -> bool:
    """Whether region node `a` is `b` or one of its region ancestors."""
    stack, seen = [b], set()
    while stack:
        x = stack.pop()
        if x is a:
            return True
        if x in seen or x not in r.g.rules:
            continue
        seen.add(x)
        stack.extend(r.g.rules[x].inputs)
    return False


def _region_entry(r: _Region, scope: str, idx: int) -> dict:
    paths = [f"{scope}.{p}" if scope else p for p in r.module_paths()]
    return {"id": idx, "scope": _common_prefix(paths), "modules": paths,
            "nodes": [n.name for n in r.nodes], "ops": r.kinds,
            "in_channels": r.g.meta[r.inputs[0]].dims()[1] if r.g._is4d(r.inputs[0]) else None,
            "params_before": r.params_used(), "macs_per_pixel_before": r.conv_macs()}


@dataclass
class _Built:
    modules: list[nn.Module]  # in the model's dtype
    modules64: list[nn.Module]  # the same convs with float64 kernels


def _build_and_verify(r: _Region, aff: dict[fx.Node, _Affine], ctx: _Pass, entry: dict) -> _Built | None:
    dtype = r.g.meta[r.inputs[0]].dtype
    mods, mods64, kernels, groups, dilations = [], [], [], [], []
    for o in r.outputs:
        a = aff[o]
        g = _groups(a.kernel)
        mods64.append(_conv_module(a, g, torch.float64))
        mods.append(copy.deepcopy(mods64[-1]).to(dtype))
        conv = _conv_of(mods[-1])
        kernels.append(list(conv.kernel_size))
        groups.append(g)
        dilations.append(list(conv.dilation))
    macs_after = sum(_module_macs(m) for m in mods)
    params_after = sum(p.numel() for m in mods for p in m.parameters())
    one = len(mods) == 1
    entry.update(kernel=kernels[0] if one else kernels, groups=groups[0] if one else groups,
                 dilation=dilations[0] if one else dilations,
                 out_channels=[r.g.meta[o].dims()[1] for o in r.outputs], params_after=params_after,
                 macs_per_pixel_after=macs_after)
    if ctx.only_if_cheaper and macs_after > entry["macs_per_pixel_before"]:
        entry.update(status="left", reason=f"one conv would cost more ({macs_after} > "
                                           f"{entry['macs_per_pixel_before']} MACs per pixel)")
        return None
    n_convs = r.kinds.get("conv", 0)
    if macs_after == entry["macs_per_pixel_before"] and len(mods) > n_convs:
        entry.update(status="left", reason=f"no gain: {n_convs} conv(s) would become {len(mods)} of the same cost")
        return None
    # the collapsed convs in float64 (exactness) and in the model's dtype (deploy precision)
    check = _verify_region(r, mods, mods64, ctx.tol)
    entry.update(check)
    if not check["ok"]:
        entry.update(status="left", reason=f"fp32 verification failed: max abs {check['max_abs_fp32']:.3g} "
                                           f"(reference max {check['ref_max_fp32']:.3g})")
        return None
    entry.update(status="collapsed")
    return _Built(mods, mods64)


def _verify_region(r: _Region, mods: list[nn.Module], mods64: list[nn.Module], tol: float) -> dict:
    inp = r.inputs[0]
    meta = r.g.meta[inp]
    cin = meta.dims()[1]
    sub = r.subgraph(r.outputs)
    sub64 = clone_module(sub).double()
    g = torch.Generator().manual_seed(1234)
    mean = (meta.mean if meta.mean is not None else torch.zeros(cin)).view(1, -1, 1, 1)
    std = (meta.std if meta.std is not None else torch.ones(cin)).clamp_min(1e-3).view(1, -1, 1, 1)
    worst32 = worst64 = ref32 = 0.0
    sizes = []
    with torch.no_grad():
        for hw in VERIFY_SIZES:
            x64 = torch.randn(2, cin, *hw, generator=g, dtype=torch.float64) * std + mean
            try:
                ref64 = sub64(x64)
            except Exception:  # noqa: BLE001 - size not applicable to this region
                continue
            sizes.append(list(hw))
            x32 = x64.to(meta.dtype)
            ref = sub(x32)
            for m, m64, o, o64 in zip(mods, mods64, ref, ref64):
                e64, _ = _rel(m64(x64), o64)
                e32, s32 = _rel(m(x32).double(), o.double())
                worst64 = max(worst64, e64 / max(1.0, float(o64.abs().max())))
                worst32, ref32 = max(worst32, e32), max(ref32, s32)
    ok = bool(sizes) and worst32 <= tol * max(1.0, ref32) and worst64 <= EXACT_TOL64
    return {"ok": ok, "sizes": sizes, "max_abs_fp32": worst32, "ref_max_fp32": ref32, "max_rel_fp64": worst64}


def _groups(k: torch.Tensor) -> int:
    """Largest g such that the dense kernel is block-diagonal with g equal groups."""
    cout, cin = k.shape[:2]
    mag = k.abs().amax(dim=(2, 3))
    floor = 1e-12 * float(mag.max()) if mag.numel() else 0.0
    for g in sorted((d for d in range(1, math.gcd(cout, cin) + 1) if cout % d == 0 and cin % d == 0), reverse=True):
        if g == 1:
            return 1
        oc, ic = cout // g, cin // g
        mask = torch.ones_like(mag, dtype=torch.bool)
        for j in range(g):
            mask[j * oc:(j + 1) * oc, j * ic:(j + 1) * ic] = False
        if float(mag[mask].max()) <= floor:
            return g
    return 1


def _conv_module(a: _Affine, groups: int, dtype: torch.dtype) -> nn.Module:
    """The probed map as an nn.Conv2d (preceded by a ZeroPad2d when its padding is uneven).

    All-zero outer rows/columns of the kernel are dropped and taps on a regular lattice
    become a dilated conv (a dilated 3x3 plus an identity stays a dilated 3x3, not a dense 5x5).
    """
    cout, cin = a.kernel.shape[:2]
    l, r, t, b = a.win.pads
    k = a.kernel
    if groups > 1:
        oc, ic = cout // groups, cin // groups
        k = torch.cat([k[j * oc:(j + 1) * oc, j * ic:(j + 1) * ic] for j in range(groups)])
    mag = k.abs().amax(dim=(0, 1))
    live = mag > 1e-12 * float(mag.max()) if mag.numel() and float(mag.max()) > 0 else torch.ones_like(mag, dtype=torch.bool)
    rows, cols = live.any(1).nonzero().flatten(), live.any(0).nonzero().flatten()
    if rows.numel() and cols.numel():
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        t, b = t - r0, b - (k.shape[2] - 1 - r1)
        l, r = l - c0, r - (k.shape[3] - 1 - c1)
        k = k[:, :, r0:r1 + 1, c0:c1 + 1]
        live = live[r0:r1 + 1, c0:c1 + 1]
    dh = _lattice(live.any(1).nonzero().flatten().tolist(), k.shape[2])
    dw = _lattice(live.any(0).nonzero().flatten().tolist(), k.shape[3])
    k = k[:, :, ::dh, ::dw]
    symmetric = l == r >= 0 and t == b >= 0
    biased = bool(a.bias.abs().max() > 0) if a.bias.numel() else False  # bias-free convs stay bias-free
    conv = nn.Conv2d(cin, cout, tuple(k.shape[2:]), padding=(t, l) if symmetric else 0, dilation=(dh, dw),
                     groups=groups, bias=biased, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(k)
        if biased:
            conv.bias.copy_(a.bias)
    conv = conv.to(dtype).eval()
    return conv if symmetric else nn.Sequential(nn.ZeroPad2d((l, r, t, b)), conv).eval()


def _lattice(taps: list[int], size: int) -> int:
    """Largest d with every live tap index and the last index multiples of d (1: dense)."""
    d = size - 1
    for i in taps:
        d = math.gcd(d, i)
    return max(d, 1)


def _conv_of(m: nn.Module) -> nn.Conv2d:
    return m if isinstance(m, nn.Conv2d) else m[1]


def _module_macs(m: nn.Module) -> int:
    conv = _conv_of(m)
    return conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]


def _rewrite(gm: fx.GraphModule, r: _Region, built: _Built, name: str,
             replaced: dict[fx.Node, fx.Node]) -> list[tuple[str, nn.Module]]:
    """Swap the region for its conv(s); returns (submodule name, float64 twin) per conv."""
    graph = gm.graph
    added = []
    inp = replaced.get(r.inputs[0], r.inputs[0])
    for i, (o, m) in enumerate(zip(r.outputs, built.modules)):
        target = name if len(built.modules) == 1 else f"{name}_{i}"
        gm.add_submodule(target, m)
        added.append((target, built.modules64[i]))
        with graph.inserting_before(o):
            new = graph.call_module(target, (inp,))
        new.meta.update({k: v for k, v in o.meta.items() if k in ("nn_module_stack", "tensor_meta")})
        o.replace_all_uses_with(new)
        replaced[o] = new
    doomed = list(r.nodes)
    consts = {a for n in doomed for a in _const_ancestors(n, r.g)}
    for n in reversed(doomed):
        if not n.users:
            graph.erase_node(n)
    # (a node made by an earlier rewrite is not in the analysis order: it goes last)
    for n in sorted(consts, key=lambda c: r.g.order.get(c, -1), reverse=True):
        if not n.users and n.op in ("get_attr", "call_function", "call_method") and n.graph is graph:
            graph.erase_node(n)
    return added


# ---- whole-model check and report ----------------------------------------------------------

def _verify_whole(original: nn.Module, new: nn.Module, twin64: nn.Module | None, example: torch.Tensor,
                  tol: float) -> dict:
    """Original vs rewritten model on the example and an odd non-square crop of it.

    Exactness is judged in float64 (the rewritten model with unrounded kernels): whole
    random-weight networks amplify fp32 rounding far beyond any per-layer tolerance, in the
    hand-written reparameterization as much as here. The fp32 difference is measured and
    reported; it decides only when the model cannot run in float64.
    """
    _, _, h, w = example.shape
    sizes = [(h, w)]
    oh = h if h % 2 else h - 1
    ow = w if w % 2 else w - 1
    if oh == ow and ow > 2:
        ow -= 2
    if oh >= 1 and ow >= 1 and (oh, ow) != (h, w):
        sizes.append((oh, ow))
    orig64 = None
    if twin64 is not None:
        try:
            orig64 = clone_module(original).double()
        except Exception:  # noqa: BLE001
            orig64 = None
    worst32 = ref32 = 0.0
    worst64: float | None = 0.0 if orig64 is not None else None
    ran: list[list[int]] = []
    skipped: list[dict[str, Any]] = []
    with torch.no_grad():
        for hw in sizes:
            x = example[:, :, :hw[0], :hw[1]].contiguous()
            try:
                ref = _flat(original(x))
            except Exception as e:  # noqa: BLE001 - the model itself refuses this size
                skipped.append({"size": list(hw), "reason": _one_line(e)})
                continue
            out = _flat(new(x))
            if len(out) != len(ref):
                return {"ok": False, "sizes": ran, "max_abs_fp32": math.inf, "ref_max_fp32": ref32,
                        "max_rel_fp64": worst64, "skipped": skipped}
            for o, rf in zip(out, ref):
                err, sc = _rel(o.double(), rf.double())
                worst32, ref32 = max(worst32, err), max(ref32, sc)
            if worst64 is not None and orig64 is not None and twin64 is not None:
                try:
                    r64, o64 = _flat(orig64(x.double())), _flat(twin64(x.double()))
                    for o, rf in zip(o64, r64):
                        err, sc = _rel(o, rf)
                        worst64 = max(worst64, err / max(1.0, sc))
                except Exception:  # noqa: BLE001 - user code that only runs in fp32
                    worst64 = None
            ran.append(list(hw))
    if not ran:
        ok = False
    elif worst64 is not None:
        ok = worst64 <= WHOLE_TOL64
    else:
        ok = worst32 <= tol * max(1.0, ref32)
    return {"ok": ok, "sizes": ran, "max_abs_fp32": worst32, "ref_max_fp32": ref32, "max_rel_fp64": worst64,
            "skipped": skipped}


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat(o)]
    return []


def _report(original: nn.Module, new: nn.Module, example: torch.Tensor, regions: list[dict], capture: dict,
            whole: dict, tol: float) -> dict:
    from ..costmodel import count_macs, count_params

    def macs(m: nn.Module) -> float | None:
        try:
            c = count_macs(m, tuple(example.shape))
        except Exception:  # noqa: BLE001 - cost is informative only
            return None
        return round(c.functional_macs / max(1, c.output_pixels), 2)

    collapsed = [r for r in regions if r["status"] == "collapsed"]
    return {
        "capture": capture,
        "tolerance": tol,
        "regions_collapsed": len(collapsed),
        "regions_left": len(regions) - len(collapsed),
        "params_before": count_params(original),
        "params_after": count_params(new),
        "macs_per_output_pixel_before": macs(original),
        "macs_per_output_pixel_after": macs(new),
        "region_macs_per_pixel_before": sum(r["macs_per_pixel_before"] for r in collapsed),
        "region_macs_per_pixel_after": sum(r["macs_per_pixel_after"] for r in collapsed),
        "region_max_abs_fp32": max((r["max_abs_fp32"] for r in collapsed), default=0.0),
        "verification": whole,
        "regions": regions,
    }


def summary_lines(report: dict) -> list[str]:
    """Human-readable lines of a report (one per region, then totals)."""
    lines = []
    for r in report["regions"]:
        k = r.get("kernel")
        ks = "x".join(map(str, k)) if k and isinstance(k[0], int) else str(k)
        head = f"  {r['status']:9s} {r['scope'] or '(root)'}: {_ops_text(r['ops'])}"
        if r["status"] == "collapsed":
            lines.append(f"{head} -> {ks} conv; params {r['params_before']} -> {r['params_after']}, "
                         f"MACs/px {r['macs_per_pixel_before']} -> {r['macs_per_pixel_after']}, "
                         f"fp32 max abs {r['max_abs_fp32']:.2e}")
        else:
            lines.append(f"{head} ({r.get('reason', '')})")
    for h in (report.get("deploy_hooks") or {}).get("hooks", []):
        lines.append(f"  hook      {h['module']}.{h['hook']}(): {h['status']}"
                     + (f" ({h['reason']})" if h.get("reason") else f", max abs {h['max_abs']:.1e}"))
    for sp in report.get("splits", []):
        lines.append(f"  split     {sp['module'] or '(root)'}: {sp['reason']}; kept {sp['split_at']} as a tensor")
    v = report["verification"]
    lines.append(f"  {report['regions_collapsed']} regions collapsed, {report['regions_left']} left; params "
                 f"{report['params_before']} -> {report['params_after']}; MACs/output px "
                 f"{_fmt_n(report['macs_per_output_pixel_before'])} -> {_fmt_n(report['macs_per_output_pixel_after'])}; "
                 f"whole model "
                 f"fp32 max abs {v['max_abs_fp32']:.2e} (fp64 rel {_fmt(v['max_rel_fp64'])}) at "
                 f"{', '.join('x'.join(map(str, s)) for s in v['sizes'])} "
                 f"(capture: {report['capture']['method']})")
    return lines


def _fmt_n(v: float | None) -> str:
    return "n/a" if v is None else f"{v:g}"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1e}"


def _ops_text(ops: dict[str, int]) -> str:
    return " + ".join(f"{v} {k}" for k, v in sorted(ops.items()) if k != "move") or "no ops"


# ---- small helpers -------------------------------------------------------------------------

def _arg(args: list, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if i < len(args):
        return args[i]
    return kwargs.get(name, default)


def _pair(v: Any) -> tuple:
    if isinstance(v, (tuple, list)):
        return tuple(v) if len(v) == 2 else (v[0], v[0])
    return v, v


def _no_nodes_inside(a: Any, dep: set[fx.Node]) -> bool:
    if isinstance(a, fx.Node):
        return a not in dep
    if isinstance(a, (tuple, list)):
        return all(_no_nodes_inside(v, dep) for v in a)
    if isinstance(a, dict):
        return all(_no_nodes_inside(v, dep) for v in a.values())
    return True


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _common_prefix(paths: list[str]) -> str:
    if not paths:
        return ""
    parts = [p.split(".") for p in paths]
    out = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        out.append(level[0])
    return ".".join(out)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
