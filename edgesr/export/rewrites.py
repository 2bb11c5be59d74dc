"""Exact exportable forms of operations the TorchScript ONNX exporter refuses in user code.

Research models use a few operations that ``torch.onnx.export(dynamo=False)`` cannot convert,
or converts only at a fixed size. Rather than asking the author to change their code, edgesr
substitutes an equivalent formulation *while tracing* (a :class:`torch.overrides.TorchFunctionMode`
active only around the exporter's trace): the user's module is untouched, the eager PyTorch
module stays the reference, and every export is checked against it (ORT vs PyTorch on odd
sizes in ``export_onnx``, then parity on Set5). Each rewrite is also checked in PyTorch before
it is used (:func:`plan_rewrites`: eager forward with and without the rewrites, max abs).

Rewrites (``KINDS``):

``unfold``   ``Tensor.unfold(dim, size, step)`` (sliding windows, e.g. a strided local variance)
             -> one ``index_select`` (ONNX Gather) with window indices built from the traced size,
             then a reshape. A gather copies values: bit-exact, and dynamic in H/W. (``F.unfold`` /
             ``nn.Unfold`` already export dynamically through im2col and are left alone.)
``fft``      ``torch.fft.rfft / rfft2 / rfftn`` over the trailing one or two dims (``rfft`` / ``irfft``
             over any one dim, moved last and back) and their inverses
             ``irfft / irfft2 / irfftn`` -> real matrix products with cosine / sine DFT matrices
             built in the graph from the traced size (angles from exact integer products taken
             modulo the length, so fp32 angles stay below 2*pi). The spectrum is carried as a
             (real, imag) pair: ``.real``, ``.imag``, ``torch.complex``, ``view_as_real`` /
             ``view_as_complex``, ``abs`` and complex ``+ - *`` are supported; anything else on a
             spectrum raises an ExportError naming the operation. Not bit-exact (a DFT as sums in
             a different order): verified within the export tolerance.
``adaptive`` ``adaptive_max_pool2d`` / ``adaptive_avg_pool2d`` to an output size that divides the
             input size (``(h // 8, w // 8)`` on a multiple of 8) -> ``max_pool2d`` / ``avg_pool2d``
             with kernel = stride = input / output: the same windows, so exact. The exporter
             refuses adaptive pooling whose output size is computed from the input's shape; the
             pooling kernel is a graph constant, so a dynamic export with it fails the odd-size
             check and the fixed-size export (where it is exact by construction) is used.
            Sizes that do not divide are left to the original call.
``frozen``   convolution kernels computed in ``forward`` from parameters and constants only (a
             kernel built with ``torch.zeros`` + index assignment each call, a weight-normalised
             kernel, ...): the exporter cannot see such a kernel's shape. A pre-pass runs the model
             eagerly at two sizes on different inputs; a convolution call whose kernel (and bias)
             is the same tensor value in every run, and is not a parameter or buffer, is frozen:
             during the trace its kernel is that eagerly computed value, a graph constant. Exact
             (the value PyTorch computes); a kernel that depends on the input is never frozen.

Over 500 lines on purpose: each rewrite is an exact, self-contained formulation with its own check,
and the set is applied as one tracing mode; splitting it would scatter one mechanism.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ExportError

KINDS = ("unfold", "fft", "adaptive", "frozen")


# ---- unfold -------------------------------------------------------------------------------------

def unfold_gather(x, dim: int, size: int, step: int):
    """``x.unfold(dim, size, step)`` as a gather: exact and traceable with a dynamic length."""
    import torch

    dim = dim % x.dim()
    length = x.shape[dim]  # a traced 0-d tensor while exporting, an int in eager mode
    n = (length - size) // step + 1
    starts = torch.arange(n, device=x.device) * step
    index = (starts[:, None] + torch.arange(size, device=x.device)[None, :]).reshape(-1)
    out = torch.index_select(x, dim, index)
    shape = list(x.shape[:dim]) + [-1, size] + list(x.shape[dim + 1:])
    return out.reshape(shape).movedim(dim + 1, -1)


# ---- FFT as real matrix products ----------------------------------------------------------------

class Spectrum:
    """A complex tensor as a (real, imag) pair of real tensors, for the traced graph only."""

    __slots__ = ("real", "imag")

    def __init__(self, real, imag):
        self.real, self.imag = real, imag

    @property
    def shape(self):
        return self.real.shape

    @property
    def dtype(self):
        return self.real.dtype

    @property
    def device(self):
        return self.real.device

    def dim(self) -> int:
        return self.real.dim()

    def size(self, *args):
        return self.real.size(*args)

    def abs(self):
        return (self.real * self.real + self.imag * self.imag).sqrt()

    def _pair(self, other):
        if isinstance(other, Spectrum):
            return other.real, other.imag
        if getattr(other, "is_complex", lambda: False)():
            raise _unsupported("a complex tensor combined with a spectrum")
        return other, None

    def __add__(self, other):
        r, i = self._pair(other)
        return Spectrum(self.real + r, self.imag if i is None else self.imag + i)

    __radd__ = __add__

    def __sub__(self, other):
        r, i = self._pair(other)
        return Spectrum(self.real - r, self.imag if i is None else self.imag - i)

    def __rsub__(self, other):
        r, i = self._pair(other)
        return Spectrum(r - self.real, -self.imag if i is None else i - self.imag)

    def __mul__(self, other):
        r, i = self._pair(other)
        if i is None:
            return Spectrum(self.real * r, self.imag * r)
        return Spectrum(self.real * r - self.imag * i, self.real * i + self.imag * r)

    __rmul__ = __mul__

    def __neg__(self):
        return Spectrum(-self.real, -self.imag)

    def __getattr__(self, name: str):
        raise _unsupported(f"'.{name}' of an FFT spectrum")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Makes torch's argument parser accept a Spectrum where a tensor goes, so that the active
        # ExportRewrites mode sees the call (modes come first); reached only without the mode.
        raise _unsupported(getattr(func, "__name__", str(func)))


def _unsupported(what: str) -> ExportError:
    return ExportError(f"edgesr's FFT export rewrite does not support {what} (supported on a spectrum: .real, "
                       ".imag, abs, + - *, torch.complex, view_as_real/view_as_complex, the inverse rfft)")


def _dft_tables(n, k, inverse_weights: bool = False, device=None):
    """cos/sin of 2*pi*j*m/n for j < n (rows) and m < k (columns), from exact integer products
    taken mod n. inverse_weights: rows are frequencies m < k and columns samples j < n, scaled by
    the c2r weights (1 for DC and for the Nyquist bin of an even n, 2 otherwise)."""
    import torch

    j = torch.arange(n, device=device)
    m = torch.arange(k, device=device)
    phase = (j[:, None] * m[None, :]) % n
    angle = phase.to(torch.float32) * (2 * math.pi) / n
    cos, sin = torch.cos(angle), torch.sin(angle)
    if not inverse_weights:
        return cos, sin
    w = torch.where((m == 0) | (2 * m == n), torch.ones_like(m), 2 * torch.ones_like(m)).to(torch.float32)
    return cos.transpose(0, 1) * w[:, None], sin.transpose(0, 1) * w[:, None]


def _full_dft(n, device=None):
    import torch

    j = torch.arange(n, device=device)
    angle = ((j[:, None] * j[None, :]) % n).to(torch.float32) * (2 * math.pi) / n
    return torch.cos(angle), torch.sin(angle)


def _norm_factor(norm: str | None, n, inverse: bool):
    norm = norm or "backward"
    if norm == "ortho":
        return 1.0 / (n ** 0.5) if isinstance(n, (int, float)) else (n.to(__import__("torch").float32)).rsqrt()
    if (norm == "backward") == inverse:
        return 1.0 / n if isinstance(n, (int, float)) else 1.0 / n.to(__import__("torch").float32)
    return 1.0


def rfft_last(x, ndim: int, norm: str | None) -> Spectrum:
    """rfft over the last dim (ndim 1) or rfft2 over the last two (ndim 2)."""
    import torch

    w = x.shape[-1]
    cw, sw = _dft_tables(w, w // 2 + 1, device=x.device)
    ar = torch.matmul(x, cw)
    ai = -torch.matmul(x, sw)
    n = w
    if ndim == 2:
        h = x.shape[-2]
        ch, sh = _full_dft(h, device=x.device)
        ar, ai = torch.matmul(ch, ar) + torch.matmul(sh, ai), torch.matmul(ch, ai) - torch.matmul(sh, ar)
        n = h * w
    f = _norm_factor(norm, n, inverse=False)
    return Spectrum(ar * f, ai * f) if not (isinstance(f, float) and f == 1.0) else Spectrum(ar, ai)


def irfft_last(spec: Spectrum, ndim: int, out_w, norm: str | None):
    """irfft over the last dim / irfft2 over the last two, to `out_w` samples on the last dim."""
    import torch

    br, bi = spec.real, spec.imag
    n = out_w
    if ndim == 2:
        h = br.shape[-2]
        ch, sh = _full_dft(h, device=br.device)
        br, bi = torch.matmul(ch, br) - torch.matmul(sh, bi), torch.matmul(ch, bi) + torch.matmul(sh, br)
        n = h * out_w
    k = br.shape[-1]
    used = out_w // 2 + 1
    if not isinstance(k, int) or not isinstance(used, int) or k != used:
        if isinstance(k, int) and isinstance(used, int) and k < used:
            raise _unsupported(f"an inverse rfft to {out_w} samples from {k} bins (zero padding)")
        br, bi = br[..., :used], bi[..., :used]
    cinv, sinv = _dft_tables(out_w, used, inverse_weights=True, device=br.device)
    y = torch.matmul(br, cinv) - torch.matmul(bi, sinv)
    f = _norm_factor(norm, n, inverse=True)
    return y * f if not (isinstance(f, float) and f == 1.0) else y


def _trailing(dims, nd: int) -> int | None:
    """1 or 2 when `dims` are the last one or two dims of an nd tensor, else None."""
    if dims is None:
        return None
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    norm = tuple(sorted(d % nd for d in dims))
    if norm == (nd - 1,):
        return 1
    if norm == (nd - 2, nd - 1):
        return 2
    return None


# ---- the mode ------------------------------------------------------------------------------------

def _conv_functions() -> dict:
    import torch

    return {torch.conv1d: "conv1d", torch.conv2d: "conv2d", torch.conv3d: "conv3d",
            torch.conv_transpose1d: "conv_transpose1d", torch.conv_transpose2d: "conv_transpose2d",
            torch.conv_transpose3d: "conv_transpose3d"}


def _make_mode_class():
    import torch
    from torch.overrides import TorchFunctionMode

    fft = torch.fft
    forward_fft = {fft.rfft: 1, fft.rfft2: 2, fft.rfftn: None}
    inverse_fft = {fft.irfft: 1, fft.irfft2: 2, fft.irfftn: None}
    convs = _conv_functions()

    class ExportRewrites(TorchFunctionMode):
        """Active around the exporter's trace (and the eager check): see the module docstring."""

        def __init__(self, kinds: Sequence[str] = KINDS, frozen: dict[int, tuple] | None = None,
                     conv_calls: int = 0, record: list | None = None):
            super().__init__()
            self.kinds = set(kinds)
            self.frozen = frozen or {}
            self.conv_calls = conv_calls  # convolution calls per forward (for the frozen indices)
            self.record = record  # pre-pass: every convolution call's (name, weight, bias)
            self.counts = {k: 0 for k in KINDS}
            self._conv_i = 0
            self._spectra = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if "unfold" in self.kinds and func is torch.Tensor.unfold:
                x, dim, size, step = _bind(args, kwargs, ("self", "dimension", "size", "step"))
                if isinstance(x, torch.Tensor) and x.dim() > 0:
                    self.counts["unfold"] += 1
                    return unfold_gather(x, dim, size, step)
            if "fft" in self.kinds:
                out = self._fft(func, args, kwargs)
                if out is not NotImplemented:
                    return out
            if "adaptive" in self.kinds and getattr(func, "__name__", "") in _ADAPTIVE:
                out = _adaptive_as_pool(func.__name__, args, kwargs)
                if out is not NotImplemented:
                    self.counts["adaptive"] += 1
                    return out
            if func in convs and (self.record is not None or self.frozen):
                return self._conv(func, args, kwargs)
            if any(isinstance(a, Spectrum) for a in _flat(args, kwargs)):
                name = getattr(func, "__name__", str(func))
                if name in _ARITH and len(args) == 2 and not kwargs:
                    return _arith(_ARITH[name], *args)
                raise _unsupported(name)
            return func(*args, **kwargs)

        def _fft(self, func, args, kwargs):
            if func in forward_fft:
                x = args[0] if args else kwargs.get("input")
                if not isinstance(x, torch.Tensor) or x.is_complex() or x.dim() < 2:
                    return NotImplemented
                names = ("input", "n", "dim", "norm") if func is fft.rfft else ("input", "s", "dim", "norm")
                _, s, dim, norm = _bind(args, kwargs, names, defaults={"dim": -1 if func is fft.rfft else
                                                                         ((-2, -1) if func is fft.rfft2 else None)})
                if func is fft.rfft and s is None and isinstance(dim, int) and _trailing(dim, x.dim()) is None:
                    d = dim % x.dim()  # one dim that is not the last: move it last and back
                    sp = rfft_last(x.transpose(d, -1), 1, norm)
                    self.counts["fft"] += 1
                    self._spectra += 1
                    return Spectrum(sp.real.transpose(d, -1), sp.imag.transpose(d, -1))
                nd = forward_fft[func] or _trailing(dim, x.dim())
                if nd is None or _trailing(dim, x.dim()) != nd or s is not None:
                    return NotImplemented
                self.counts["fft"] += 1
                self._spectra += 1
                return rfft_last(x, nd, norm)
            if func in inverse_fft:
                spec = args[0] if args else kwargs.get("input")
                if not isinstance(spec, Spectrum):
                    return NotImplemented
                names = ("input", "n", "dim", "norm") if func is fft.irfft else ("input", "s", "dim", "norm")
                _, s, dim, norm = _bind(args, kwargs, names, defaults={"dim": -1 if func is fft.irfft else
                                                                         ((-2, -1) if func is fft.irfft2 else None)})
                if func is fft.irfft and isinstance(dim, int) and _trailing(dim, spec.dim()) is None:
                    d = dim % spec.dim()
                    moved = Spectrum(spec.real.transpose(d, -1), spec.imag.transpose(d, -1))
                    out_w = 2 * (moved.shape[-1] - 1) if s is None else s
                    self.counts["fft"] += 1
                    return irfft_last(moved, 1, out_w, norm).transpose(d, -1)
                nd = inverse_fft[func] or _trailing(dim, spec.dim())
                if nd is None or _trailing(dim, spec.dim()) != nd:
                    raise _unsupported(f"{func.__name__} over dims {dim}")
                if s is None:
                    out_w = 2 * (spec.shape[-1] - 1)
                else:
                    s = (s,) if not isinstance(s, (tuple, list, torch.Size)) else tuple(s)
                    out_w = s[-1]
                    if nd == 2 and len(s) == 2 and isinstance(s[0], int) and isinstance(spec.shape[-2], int) \
                            and s[0] != spec.shape[-2]:
                        raise _unsupported(f"{func.__name__} to {s[0]} rows from {spec.shape[-2]}")
                self.counts["fft"] += 1
                return irfft_last(spec, nd, out_w, norm)
            if self._spectra:
                if func is torch.complex:
                    real, imag = _bind(args, kwargs, ("real", "imag"))
                    return Spectrum(real, imag)
                if func is torch.view_as_complex:
                    t = args[0] if args else kwargs["input"]
                    return Spectrum(t[..., 0], t[..., 1])
                if func is torch.view_as_real and isinstance(args[0], Spectrum):
                    return torch.stack([args[0].real, args[0].imag], dim=-1)
                if func in (torch.abs, torch.Tensor.abs) and isinstance(args[0], Spectrum):
                    return args[0].abs()
            return NotImplemented

        def _conv(self, func, args, kwargs):
            names = ("input", "weight", "bias")
            args = list(args)
            i = self._conv_i
            self._conv_i += 1
            if self.record is not None:
                _, w, b = _bind(args, kwargs, names, defaults={"bias": None})
                self.record.append((convs[func], w.detach().clone(), None if b is None else b.detach().clone(), w, b))
                return func(*args, **kwargs)
            key = i % self.conv_calls if self.conv_calls else i
            if key in self.frozen:
                w, b = self.frozen[key]
                for pos, name, value in ((1, "weight", w), (2, "bias", b)):
                    if value is None:
                        continue
                    if len(args) > pos:
                        args[pos] = value
                    else:
                        kwargs[name] = value
                self.counts["frozen"] += 1
            return func(*args, **kwargs)

    return ExportRewrites


# ---- adaptive pooling whose output size divides the input size -----------------------------------

_ADAPTIVE = {"adaptive_max_pool2d": "max", "adaptive_avg_pool2d": "avg"}


def _adaptive_as_pool(name: str, args, kwargs):
    """max_pool2d / avg_pool2d with kernel = stride = input / output size when that divides
    exactly (the adaptive windows are then exactly those); NotImplemented otherwise."""
    import torch.nn.functional as F

    x, size, *rest = _bind(args, kwargs, ("input", "output_size", "return_indices"))
    if rest and rest[0] or getattr(x, "dim", lambda: 0)() not in (3, 4):
        return NotImplemented
    h, w = int(x.shape[-2]), int(x.shape[-1])
    oh, ow = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
    oh, ow = h if oh is None else int(oh), w if ow is None else int(ow)
    if oh <= 0 or ow <= 0 or h % oh or w % ow:
        return NotImplemented
    k = (h // oh, w // ow)
    if k == (1, 1):
        return x.clone()
    return F.max_pool2d(x, k, k) if _ADAPTIVE[name] == "max" else F.avg_pool2d(x, k, k)


# Binary arithmetic reaching the mode with a Spectrum operand (tensor (op) spectrum, torch.mul(...)):
# name -> (operation, operands swapped?).
_ARITH = {"add": ("+", False), "__add__": ("+", False), "__radd__": ("+", True), "mul": ("*", False),
          "__mul__": ("*", False), "__rmul__": ("*", True), "sub": ("-", False), "__sub__": ("-", False),
          "__rsub__": ("-", True)}


def _arith(op: tuple[str, bool], a, b):
    sign, swapped = op
    x, y = (b, a) if swapped else (a, b)
    if sign == "+":
        return x + y if isinstance(x, Spectrum) else y + x
    if sign == "*":
        return x * y if isinstance(x, Spectrum) else y * x
    return x - y if isinstance(x, Spectrum) else y.__rsub__(x)


def _bind(args, kwargs, names, defaults: dict | None = None) -> list:
    out = []
    for i, n in enumerate(names):
        if i < len(args):
            out.append(args[i])
        elif n in kwargs:
            out.append(kwargs[n])
        elif defaults and n in defaults:
            out.append(defaults[n])
        else:
            out.append(None)
    return out


def _flat(args, kwargs) -> Iterator[Any]:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


_MODE = None


def rewrite_mode(**kwargs):
    """A fresh ExportRewrites mode (a TorchFunctionMode; use it as a context manager)."""
    global _MODE
    if _MODE is None:
        _MODE = _make_mode_class()
    return _MODE(**kwargs)


# ---- planning: which rewrites this model needs, verified eagerly -------------------------------

@dataclass
class RewritePlan:
    """What :func:`plan_rewrites` found: the rewrites that fire on this model and their eager
    check. `context()` gives a fresh mode for one export (None when nothing fires)."""

    kinds: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # calls per forward, by kind
    frozen: dict[int, tuple] = field(default_factory=dict)
    conv_calls: int = 0
    max_abs: float | None = None  # eager forward with vs without the rewrites
    checked_shapes: list[list[int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.kinds)

    def context(self) -> Callable[[], Any] | None:
        if not self.active:
            return None
        return lambda: rewrite_mode(kinds=self.kinds, frozen=self.frozen, conv_calls=self.conv_calls)

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.kinds, "calls_per_forward": {k: self.counts.get(k, 0) for k in self.kinds},
                "frozen_kernels": len(self.frozen), "max_abs_eager": self.max_abs,
                "checked_shapes": self.checked_shapes, "notes": self.notes}

    def describe(self) -> str:
        return ", ".join(f"{k} x{self.counts.get(k, 0)}" for k in self.kinds)


def plan_rewrites(module, inputs: Sequence[np.ndarray], tol: float = 1e-4) -> RewritePlan:
    """Find the rewrites `module` needs (run eagerly under the mode on `inputs`, at least two of
    different sizes) and check them: the rewritten eager output must equal the original within
    `tol` (unfold and frozen kernels are exact; the FFT is a DFT in another summation order).
    A kind whose rewritten forward fails or differs is dropped, with a note."""
    import torch

    plan = RewritePlan()
    xs = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
    with torch.inference_mode():
        refs = [module(x) for x in xs]
    # Frozen kernels: convolution calls whose kernel is the same value on every input, not a parameter.
    params = {id(t) for t in list(module.parameters()) + list(module.buffers())}
    records: list[list] = []
    for x in xs:
        rec: list = []
        try:
            with torch.inference_mode(), rewrite_mode(kinds=(), record=rec):
                module(x)
        except Exception as e:  # noqa: BLE001 - user code; the plain forward worked, so note and go on
            plan.notes.append(f"convolution pre-pass failed: {type(e).__name__}: {str(e)[:120]}")
            records = []
            break
        records.append(rec)
    if len(records) >= 2 and len({len(r) for r in records}) == 1 and records[0]:
        frozen = {}
        for i, calls in enumerate(zip(*records)):
            name, w0, b0, w_obj, b_obj = calls[0]
            if id(w_obj) in params and (b_obj is None or id(b_obj) in params):
                continue
            if all(c[0] == name and torch.equal(c[1], w0) and (c[2] is None) == (b0 is None)
                   and (b0 is None or torch.equal(c[2], b0)) for c in calls[1:]):
                frozen[i] = (w0.clone(), None if b0 is None else b0.clone())  # not inference tensors
        plan.conv_calls = len(records[0])
        plan.frozen = frozen
    # Which kinds fire, and is the rewritten forward the same?
    kinds = [k for k in KINDS if k != "frozen" or plan.frozen]
    for _attempt in range(len(KINDS) + 1):
        mode = rewrite_mode(kinds=kinds, frozen=plan.frozen, conv_calls=plan.conv_calls)
        try:
            err = 0.0
            with torch.inference_mode(), mode:
                outs = [module(x) for x in xs]
            for a, b in zip(outs, refs):
                err = max(err, float((a - b).abs().max()) if a.shape == b.shape else float("inf"))
            fired = [k for k in kinds if mode.counts[k]]
            bad = fired if not err <= tol else []
            failure = f"changed the output by {err:.3g} (> {tol:g})"
        except Exception as e:  # noqa: BLE001 - a rewrite meeting code it does not cover
            fired = [k for k in kinds if mode.counts[k]]
            bad = fired[-1:] or kinds[-1:]
            failure = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
            err = None
        if not bad:
            per = len(xs)
            plan.kinds = fired
            plan.counts = {k: mode.counts[k] // per for k in fired}
            plan.max_abs = err if fired else None
            plan.checked_shapes = [list(x.shape) for x in xs]
            if "frozen" not in fired:
                plan.frozen, plan.conv_calls = {}, 0
            return plan
        drop = bad[-1]
        plan.notes.append(f"{drop} rewrite not used: {failure}")
        kinds = [k for k in kinds if k != drop]
        if drop == "frozen":
            plan.frozen, plan.conv_calls = {}, 0
    return plan


@contextlib.contextmanager
def maybe(factory: Callable[[], Any] | None) -> Iterator[None]:
    """`with maybe(plan.context()):` - the mode when there is one, else nothing."""
    if factory is None:
        yield
        return
    with factory():
        yield
