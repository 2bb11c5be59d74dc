"""Receptive field and tile-exactness of an ONNX graph, read from the graph itself.

Seam-free tiling needs two properties of a model, and this module decides both from the
ONNX graph (no per-family declaration):

1. **Bounded dependency.** Every output pixel depends on input pixels within a radius R
   (the receptive field, in input pixels). It is computed exactly per axis by propagating,
   for every tensor pixel, the interval of input pixels it may depend on through each
   operator's index arithmetic (kernel, stride, dilation, padding, pixel shuffle, resize
   sampling, pad modes, slices). Operators that reduce, reshape or index over H or W
   (global pooling, attention over positions, window partitions, ...) make an interval
   cover the whole image, and an operator this module does not know is treated the same
   way, so the bound is sound: R never underestimates. R is taken at two image sizes; a
   radius that grows with the image means "global".
2. **Translation equivariance.** Cutting a box out of the image and running the model on
   it must compute the same values as the full run at the same place. Convolutions,
   pooling, pixel (un)shuffle, constant pads/slices and resizes by a constant factor are
   equivariant on a grid of ``alignment`` input pixels (the product of strides the
   signal went through). A resize to a size derived from the input size (ESA attention:
   strided conv + max-pool + interpolate back to the input size), a pad to a multiple of
   a window, position-dependent constants (attention masks) are not: tiles of such a
   model never equal the untiled output, whatever the overlap.

Shapes and the values of shape arithmetic (Shape -> Gather -> Concat -> Reshape, ...) come
from running the graph with ONNX Runtime at three small sizes (base, taller, wider), which
also tells which axis of every tensor is H and which is W. The numbers this module gives
are then *checked* numerically by :mod:`edgesr.tiling` (tiled == untiled on a natural image).

Over 500 lines on purpose: one interval-propagation analysis with a transfer rule per ONNX operator;
the rules share the propagation state and are read together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

BIG = 1 << 40  # "no dependency" sentinel for interval bounds
MAX_ANALYSIS_SIZE = 4096  # 1-D propagation length limit when looking for a stable radius
MIN_SIZE_SEARCH = 512  # min_size search range

UNARY = frozenset("""Abs Acos Acosh Asin Asinh Atan Atanh BatchNormalization Cast CastLike Ceil Celu Clip Cos Cosh
    Dropout Elu Erf Exp Floor Gelu HardSigmoid HardSwish Identity IsInf IsNaN LeakyRelu Log Mish Neg Not
    Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Tan Tanh ThresholdedRelu
    QuantizeLinear DequantizeLinear""".split())
ELEMENTWISE = frozenset("""Add And BitShift Div Equal Greater GreaterOrEqual Less LessOrEqual Max Mean Min Mod Mul
    Or PRelu Pow Sub Sum Where Xor""".split()) | UNARY
SHAPE_ONLY = frozenset({"Shape", "Size"})
RESHAPING = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten"})
REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
                    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"})
GLOBAL_POOL = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
POOL = frozenset({"MaxPool", "AveragePool", "LpPool"})


@dataclass(frozen=True)
class GraphLocality:
    """What the graph says about tiling (see the module docstring).

    local:            bounded dependency and translation-equivariant: tiles extended by
                      ``receptive_field`` pixels, with box origins on the ``alignment`` grid,
                      reproduce the untiled output.
    receptive_field:  R in input pixels (sound upper bound) when ``local``, else None.
    alignment:        box origins must be multiples of this many input pixels (1 for
                      stride-1 nets).
    min_size:         smallest H and W every layer accepts (None: not derivable).
    reasons:          why the model is not local (one short phrase each), empty when local.
    scale:            output / input size the graph computes (None when not derivable).
    """

    local: bool
    receptive_field: int | None
    alignment: int
    min_size: int | None
    reasons: tuple[str, ...] = ()
    scale: float | None = None
    nodes: int = 0
    analysed_sizes: tuple[int, ...] = ()
    # peak bytes of activations alive at once, per input pixel (from the trial run, with the
    # graph's own liveness); what one model call on an h x w box needs is about this x h x w
    activation_bytes_per_pixel: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["analysed_sizes"] = list(self.analysed_sizes)
        return d


class _NotLocal(Exception):
    pass


@dataclass
class _T:
    """What is known about one tensor."""

    kind: str  # "const" | "meta" (depends only on the input's size) | "data" (depends on pixel values)
    shapes: tuple[tuple[int, ...], ...] = ()  # at the three trial sizes (base, taller, wider)
    value: np.ndarray | None = None  # const / meta value at the base trial
    values: tuple[np.ndarray | None, ...] = ()  # meta values at the three trials
    pos: dict[str, int | None] = field(default_factory=dict)  # axis index of H and W (data tensors)


def analyze_onnx(model, *, min_size: int = 1, size_multiple: int = 1, threads: int = 1) -> GraphLocality:
    """Analyse an ONNX model (path, bytes or ModelProto) with one NCHW image input.

    ``min_size`` / ``size_multiple``: what the caller knows the model needs; the trial
    runs use sizes that respect them. Raises ExportError when the graph cannot be run.
    """
    from .export import graph as G

    m = G.load(model)
    G.toposort(m)
    return _Analysis(m, max(1, int(min_size)), max(1, int(size_multiple)), threads).run()


# --------------------------------------------------------------------------- analysis


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


class _Analysis:
    def __init__(self, model, min_size: int, multiple: int, threads: int):
        self.m, self.threads = model, threads
        self.min_size, self.multiple = min_size, multiple
        self.t: dict[str, _T] = {}
        self.reasons: list[str] = []  # non-equivariance (tiles can never be exact)
        self.global_reasons: list[str] = []  # operators that make a dependency global
        self.res: dict[tuple[str, str], Fraction] = {}  # (tensor, axis) -> tensor px per input px

    # ------------------------------------------------------------------ trials

    def run(self) -> GraphLocality:
        g = self.m.graph
        inits = {i.name for i in g.initializer}
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1:
            return self._fail(f"the graph has {len(inputs)} inputs (one image input expected)")
        self.input = inputs[0].name
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) != 4:
            return self._fail(f"the input has rank {len(dims)} (NCHW expected)")
        self.output = g.output[0].name
        try:
            self._trials(inputs[0])
        except _NotLocal as e:
            return self._fail(str(e))
        self._classify()
        scale = self._output_scale()
        radius, sizes = self._radius()
        min_size = self._min_size()
        reasons = list(dict.fromkeys(self.reasons + (self.global_reasons if radius is None else [])))
        if radius is None and not reasons:
            reasons = ["the dependency radius grows with the image size"]
        local = radius is not None and not self.reasons
        alignment = self._alignment() if local else 1
        return GraphLocality(local=local, receptive_field=radius if local else None, alignment=alignment,
                             min_size=min_size, reasons=tuple(reasons[:8]),
                             scale=float(scale) if scale is not None else None, nodes=len(g.node),
                             analysed_sizes=tuple(sizes), activation_bytes_per_pixel=self._activation_bytes())

    def _fail(self, why: str) -> GraphLocality:
        return GraphLocality(local=False, receptive_field=None, alignment=1, min_size=None, reasons=(why,),
                             nodes=len(self.m.graph.node))

    def _trials(self, inp) -> None:
        import onnx
        from onnx import numpy_helper

        from .export import graph as G

        g = self.m.graph
        c = inp.type.tensor_type.shape.dim[1].dim_value or 3
        base = _round_up(max(48, self.min_size), self.multiple)
        step = _round_up(32, self.multiple)
        self.trial_sizes = [(base, base + step), (base + step, base + step), (base, base + 2 * step)]
        types = G.tensor_types(self.m)
        for init in g.initializer:
            self.t[init.name] = _T("const", value=numpy_helper.to_array(init))
        names = []
        for node in g.node:
            for o in node.output:
                if o and o in types and o != self.output:
                    names.append(o)
        exposed = G.expose(self.m, names, types)
        # outputs ORT could not be asked for (no inferred type) stay unknown
        from .backends.ort_runner import run_session
        from .errors import BackendRunError, RunStopped

        sess = G.session(exposed, threads=self.threads, graph_opt="disable")
        out_names = [o.name for o in sess.get_outputs()]
        runs = []
        rng = np.random.default_rng(0)
        for h, w in self.trial_sizes:
            x = rng.random((1, c, h, w), dtype=np.float32)
            try:  # (run_session: Ctrl-C, SIGTERM and --time-limit stop a graph that never ends)
                vals = run_session(sess, out_names, G.feed(sess, x), what="the model (analysing its receptive field)")
            except RunStopped:
                raise
            except BackendRunError as e:
                raise _NotLocal(f"the graph does not run at {h}x{w}: {str(e).splitlines()[0][:160]}") from None
            runs.append(dict(zip(out_names, vals)))
        self.runs = runs
        self.have = set(out_names)
        self.t[self.input] = _T("data", shapes=tuple((1, c, h, w) for h, w in self.trial_sizes), pos={"H": 2, "W": 3})
        del onnx

    def _activation_bytes(self) -> float | None:
        """Peak bytes of data tensors alive at once in the base trial, per input pixel."""
        nodes = list(self.m.graph.node)
        size = {}
        run = self.runs[0]
        for name, t in self.t.items():
            if t.kind == "data" and name in run:
                size[name] = int(np.asarray(run[name]).nbytes)
        h, w = self.trial_sizes[0]
        size[self.input] = 4 * self.t[self.input].shapes[0][1] * h * w
        last = {name: -1 for name in size}
        for i, node in enumerate(nodes):
            for n in node.input:
                if n in last:
                    last[n] = i
        for o in self.m.graph.output:
            if o.name in last:
                last[o.name] = len(nodes)
        born = {self.input: -1}
        for i, node in enumerate(nodes):
            for o in node.output:
                if o in size:
                    born[o] = i
        peak = 0
        for i in range(len(nodes)):
            live = sum(b for n, b in size.items() if born.get(n, len(nodes)) <= i <= max(last[n], born.get(n, -1)))
            peak = max(peak, live)
        return round(peak / (h * w), 1) if peak else None

    def _shapes(self, name: str) -> tuple[tuple[int, ...], ...] | None:
        if name in self.have:
            return tuple(tuple(int(d) for d in np.shape(r[name])) for r in self.runs)
        return None

    # ------------------------------------------------------------------ classification

    def _classify(self) -> None:
        """Kind, trial shapes and H/W axis positions of every tensor; equivariance checks."""
        from onnx import numpy_helper

        for node in self.m.graph.node:
            op = node.op_type
            ins = [self.t.get(i) if i else None for i in node.input]
            kinds = {t.kind for t in ins if t is not None}
            if op == "Constant":
                a = node.attribute[0]
                val = numpy_helper.to_array(a.t) if a.name == "value" else np.asarray(_attrs(node)[a.name])
                self.t[node.output[0]] = _T("const", value=val)
                continue
            if op in SHAPE_ONLY:
                kind = "meta" if ins[0] is not None and ins[0].kind != "const" else "const"
            elif "data" in kinds:
                kind = "data"
            elif "meta" in kinds:
                kind = "meta"
            elif None in ins and any(i for i in node.input if i and i not in self.t):
                kind = "data"  # unknown producer: be conservative
            else:
                kind = "const"
            for o in node.output:
                if not o:
                    continue
                shapes = self._shapes(o)
                t = _T(kind, shapes=shapes or ())
                if kind in ("const", "meta") and o in self.have:
                    t.values = tuple(np.asarray(r[o]) for r in self.runs)
                    t.value = t.values[0]
                if kind == "data":
                    t.pos = self._axes(shapes) if shapes else {"H": None, "W": None}
                self.t[o] = t
            if kind == "data":
                self._check_equivariance(node, ins)

    def _axes(self, shapes) -> dict[str, int | None]:
        b, th, tw = shapes
        if not (len(b) == len(th) == len(tw)):
            return {"H": None, "W": None, "mixed": True}
        hs = [i for i in range(len(b)) if th[i] != b[i]]
        ws = [i for i in range(len(b)) if tw[i] != b[i]]
        mixed = bool(set(hs) & set(ws)) or len(hs) > 1 or len(ws) > 1
        if mixed:
            return {"H": None, "W": None, "mixed": True}
        return {"H": hs[0] if hs else None, "W": ws[0] if ws else None}

    def _check_equivariance(self, node, ins) -> None:
        """Record operators whose result depends on where the image starts or on its size."""
        op, a = node.op_type, _attrs(node)
        name = node.name or node.output[0]
        # position-dependent constants (masks, positional encodings) mixed into activations
        if op in ELEMENTWISE or op in ("Expand",):
            for _i, t in zip(node.input, ins):
                if t is None or t.kind == "data":
                    continue
                values = t.values or ((t.value,) if t.value is not None else ())
                pos = self._broadcast_spatial_positions(node, t)
                if pos and not all(np.size(v) == 0 or np.ptp(v) == 0 for v in values):
                    self.reasons.append(f"{op} {name!r} mixes in a position-dependent {'mask' if t.kind == 'meta' else 'constant'}")
        if op in ("Conv", "ConvInteger", "QLinearConv", *POOL) and a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
            if any(s > 1 for s in a.get("strides", [1])):
                self.reasons.append(f"{op} {name!r} uses SAME padding with a stride (padding depends on the size)")
        if op in ("Resize", "Upsample"):
            f = self._resize_factors(node)
            mode = a.get("coordinate_transformation_mode", "asymmetric" if op == "Upsample" else "half_pixel")
            for ax, fs in f.items():
                if fs is None or len(set(fs)) > 1:
                    k = 0 if ax == "H" else 1
                    shown = ", ".join(dict.fromkeys(("x?" if v is None else f"x{float(v):.3g}") + f" at {sz[k]} px"
                                                    for v, sz in zip(fs or (), self.trial_sizes)))
                    self.reasons.append(f"{op} {name!r} resizes {ax} by a factor that depends on the image size "
                                        f"({shown})")
                elif mode in ("align_corners", "tf_crop_and_resize"):
                    self.reasons.append(f"{op} {name!r} uses {mode} (sampling grid depends on the size)")
        if op in ("Pad", "Slice"):
            for ax in ("H", "W"):
                try:
                    self._pad_or_slice_params(node, ax)
                except _NotLocal as e:
                    self.reasons.append(str(e))

    def _broadcast_spatial_positions(self, node, t: _T) -> bool:
        """True when const/meta tensor `t` varies along the output's H or W axis."""
        out = self.t.get(node.output[0])
        if out is None or not out.shapes or not t.shapes and t.value is None:
            return False
        shapes = t.shapes or (np.shape(t.value),) * 3
        for _k, (o, s) in enumerate(zip(out.shapes, shapes)):
            for ax in ("H", "W"):
                p = out.pos.get(ax)
                if p is None:
                    continue
                q = p - (len(o) - len(s))
                if 0 <= q < len(s) and s[q] > 1:
                    return True
        return False

    # ------------------------------------------------------------------ helpers on inputs

    def _value(self, name: str, trial: int = 0) -> np.ndarray | None:
        if not name:
            return None
        t = self.t.get(name)
        if t is None:
            return None
        if t.kind == "const":
            return t.value
        if t.kind == "meta" and t.values:
            return t.values[trial]
        return None

    def _resize_factors(self, node) -> dict[str, list[Fraction | None] | None]:
        """Per spatial axis, output/input size at the three trials (equal when the factor is constant)."""
        x, y = self.t.get(node.input[0]), self.t.get(node.output[0])
        out: dict[str, list[Fraction | None] | None] = {}
        if x is None or y is None or not x.shapes or not y.shapes:
            return {"H": None, "W": None}
        scales_name = node.input[2] if node.op_type == "Resize" and len(node.input) > 2 else (
            node.input[1] if node.op_type == "Upsample" else "")
        sizes_name = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
        for ax in ("H", "W"):
            p = x.pos.get(ax)
            if p is None:
                continue
            sc = self.t.get(scales_name) if scales_name else None
            if sc is not None and sc.kind == "const" and sc.value is not None and sc.value.size and not sizes_name:
                out[ax] = [Fraction(float(sc.value[p])).limit_denominator(1024)] * 3
            else:
                out[ax] = [Fraction(ys[p], xs[p]) if xs[p] else None for xs, ys in zip(x.shapes, y.shapes)]
        return out

    def _pad_or_slice_params(self, node, ax: str) -> tuple | None:
        """Per-trial (begin, end) of a Pad or (start, end, step) of a Slice along spatial axis `ax`,
        checked to be the same offsets from the begin or the end of the axis at every trial.
        Returns None when the op does not touch `ax`."""
        x = self.t[node.input[0]]
        p = x.pos.get(ax)
        name = node.name or node.output[0]
        if p is None:
            return None
        if not x.shapes:
            raise _NotLocal(f"{node.op_type} {name!r}: input shape unknown")
        rank = len(x.shapes[0])
        if node.op_type == "Pad":
            a = _attrs(node)
            per: list[tuple[int, int]] = []
            for k in range(3):
                given = a.get("pads") if "pads" in a else self._value(node.input[1], k) if len(node.input) > 1 else None
                if given is None:
                    raise _NotLocal(f"Pad {name!r} has pads this analysis cannot read")
                pads = [int(v) for v in np.asarray(given).ravel()]
                axes = self._axes_of(node, 3, k, rank)
                n = len(axes)
                if p not in axes:
                    return None
                i = axes.index(p)
                per.append((pads[i], pads[i + n]))
            if len(set(per)) > 1:
                raise _NotLocal(f"Pad {name!r} pads {ax} by an amount that depends on the image size "
                                "(e.g. to a multiple of a window)")
            return per[0]
        # Slice
        spans: list[tuple[int, int, int]] = []
        for k in range(3):
            n_in = x.shapes[k][p]
            starts, ends = self._value(node.input[1], k), self._value(node.input[2], k)
            steps = self._value(node.input[4], k) if len(node.input) > 4 and node.input[4] else None
            if starts is None or ends is None:
                raise _NotLocal(f"Slice {name!r} has bounds this analysis cannot read")
            axes = self._axes_of(node, 3, k, rank, default=len(starts))
            if p not in axes:
                return None
            i = axes.index(p)
            step = int(np.asarray(steps).ravel()[i]) if steps is not None else 1
            s, e, _ = slice(int(starts[i]), int(ends[i]), step).indices(n_in)
            if step != 1:
                raise _NotLocal(f"Slice {name!r} subsamples {ax} with step {step}")
            spans.append((s, e, n_in))
        begin_const = len({s for s, _, _ in spans}) == 1
        end_from_end = len({n - e for _, e, n in spans}) == 1
        if not (begin_const and end_from_end):
            raise _NotLocal(f"Slice {name!r} crops {ax} at an offset that depends on the image size")
        s, e, n = spans[0]
        return (s, n - e)  # crop from the start, crop from the end (input pixels of this tensor)

    def _axes_of(self, node, index: int, trial: int, rank: int, default: int | None = None) -> list[int]:
        """The `axes` input (number `index`) of a Pad / Slice at a trial, made non-negative; absent:
        the first `default` axes (every axis when None)."""
        given = self._value(node.input[index], trial) if len(node.input) > index and node.input[index] else None
        if given is None:
            return list(range(rank if default is None else default))
        return [int(v) % rank for v in np.asarray(given).ravel()]

    # ------------------------------------------------------------------ resolution / alignment

    def _output_scale(self) -> Fraction | None:
        x, y = self.t[self.input], self.t.get(self.output)
        ph = y.pos.get("H") if y is not None else None
        if y is None or not y.shapes or ph is None:
            return None
        fs = {Fraction(ys[ph], xs[2]) for xs, ys in zip(x.shapes, y.shapes)}
        return fs.pop() if len(fs) == 1 else None

    def _alignment(self) -> int:
        """Box origins must be multiples of lcm(denominators of every tensor's resolution)."""
        al = 1
        for (_, _), r in self.res.items():
            al = math.lcm(al, r.denominator)
        return al

    # ------------------------------------------------------------------ 1-D propagation

    def _radius(self) -> tuple[int | None, list[int]]:
        """R (input pixels) when it is the same at two analysis sizes n and 2n with n > 4R, else None."""
        n = 64
        while n <= MAX_ANALYSIS_SIZE:
            rs: list[int | None] = []
            for size in (n, 2 * n):
                r = [self._propagate(ax, size).radius for ax in ("H", "W")]
                known = [v for v in r if v is not None]
                rs.append(max(known) if len(known) == len(r) else None)
            if rs[0] is not None and rs[0] == rs[1] and 4 * rs[0] + 16 <= n:
                return rs[0], [n, 2 * n]
            n *= 4
        return None, [n // 4, n // 2]

    def _min_size(self) -> int | None:
        for n in range(1, MIN_SIZE_SEARCH + 1):
            ok = [self._propagate(ax, n, sizes_only=True) for ax in ("H", "W")]
            if any(p.unknown for p in ok):
                return None
            if all(p.valid for p in ok):
                return n
        return None

    def _propagate(self, ax: str, n: int, sizes_only: bool = False) -> "_Prop":
        return _Prop(self, ax, n, sizes_only).run()


@dataclass
class _Iv:
    """Dependency of one tensor along one spatial axis at the analysis size."""

    size: int | None  # None: the tensor has no such axis (all elements share lo/hi)
    lo: np.ndarray  # first input pixel each element may depend on (BIG: none)
    hi: np.ndarray  # one past the last (-BIG: none)
    res: Fraction = Fraction(1)

    def length(self, node) -> int:
        """`size`, for the ops that are only reached with a tensor that has the axis."""
        if self.size is None:
            raise _NotLocal(f"{node.op_type} {node.name!r}: its input has no spatial axis here")
        return self.size


class _Prop:
    """Interval propagation along one axis ("H" or "W") at input size n."""

    def __init__(self, an: _Analysis, ax: str, n: int, sizes_only: bool):
        self.an, self.ax, self.n, self.sizes_only = an, ax, n, sizes_only
        self.iv: dict[str, _Iv] = {}
        self.valid = True  # every layer accepts this size
        self.unknown = False  # a size could not be derived
        self.radius: int | None = None

    def run(self) -> "_Prop":
        n = self.n
        idx: np.ndarray = np.arange(n, dtype=np.int64)
        self.iv[self.an.input] = _Iv(n, idx.copy(), idx + 1, Fraction(1))
        for node in self.an.m.graph.node:
            ins = [self.an.t.get(i) if i else None for i in node.input]
            if not any(t is not None and t.kind == "data" for t in ins):
                continue
            try:
                self._node(node)
            except _NotLocal as e:
                if not self.sizes_only:
                    self.an.global_reasons.append(str(e))
                for o in node.output:
                    if o:
                        self._global(node, o)
            if not self.valid and self.sizes_only:
                return self
        out = self.iv.get(self.an.output)
        if out is None or out.size is None:
            self.unknown = self.unknown or out is None
            return self
        if self.sizes_only:
            return self
        if out.res.denominator != 1 or out.res < 1:
            return self
        s = int(out.res)
        anchor: np.ndarray = np.arange(out.size, dtype=np.int64) // s
        ok = out.lo < BIG
        if not ok.any():
            self.radius = 0
            return self
        left = (anchor - out.lo)[ok]
        right = (out.hi - 1 - anchor)[ok]
        self.radius = int(max(0, left.max(), right.max()))
        if self.radius >= n // 2:
            self.radius = None  # depends on (nearly) the whole image: global
        return self

    # ---------------------------------------------------------------- per node

    def _data_inputs(self, node) -> list[tuple[int, str, _Iv]]:
        out = []
        for k, i in enumerate(node.input):
            t = self.an.t.get(i) if i else None
            if t is not None and t.kind == "data":
                if i not in self.iv:
                    raise _NotLocal(f"{node.op_type} {node.name!r}: input {i!r} was not analysed")
                out.append((k, i, self.iv[i]))
        return out

    def _global(self, node, o: str) -> None:
        t = self.an.t.get(o)
        if t is None or t.kind != "data":
            return
        p = t.pos.get(self.ax)
        size = t.shapes[0][p] if (p is not None and t.shapes) else None
        # size at this n is unknown for an op we could not follow: scale the trial size
        if size is not None:
            size = max(1, round(size * self.n / self.an.trial_sizes[0][0 if self.ax == "H" else 1]))
            self.unknown = True
        self.iv[o] = _Iv(size, np.zeros(size or 1, dtype=np.int64), np.full(size or 1, self.n, dtype=np.int64),
                         Fraction(1))

    def _set(self, o: str, iv: _Iv) -> None:
        t = self.an.t.get(o)
        if t is not None and t.kind == "data":
            p = t.pos.get(self.ax)
            if (p is None) != (iv.size is None):
                raise _NotLocal(f"tensor {o!r}: cannot follow the {self.ax} axis")
            if iv.size is not None:
                self.an.res[(o, self.ax)] = iv.res
        self.iv[o] = iv
        if iv.size is not None and iv.size < 1:
            self.valid = False

    def _node(self, node) -> None:
        op, a = node.op_type, _attrs(node)
        name = node.name or node.output[0]
        data = self._data_inputs(node)
        first = self.an.t[node.input[0]] if node.input and node.input[0] in self.an.t else None
        if op in ELEMENTWISE or op in ("Expand",):
            iv = self._union(node, [iv for _, _, iv in data])
            out_t = self.an.t.get(node.output[0])
            if out_t is not None and out_t.pos.get(self.ax) is not None and (iv.size is None or iv.size == 1):
                size = self._size_like(out_t)  # broadcast up by a shape / mask input
                iv = _Iv(size, np.full(size, iv.lo.min()), np.full(size, iv.hi.max()), Fraction(1))
            self._set(node.output[0], iv)
            return
        if op in SHAPE_ONLY:
            return
        x = self.iv.get(node.input[0]) if node.input else None
        if x is None or first is None or first.kind != "data":
            raise _NotLocal(f"{op} {name!r} takes activations as a parameter (e.g. attention weights)")
        p = first.pos.get(self.ax)
        if op in ("Conv", "ConvInteger", *POOL):
            if len(data) > 1:
                raise _NotLocal(f"{op} {name!r} has weights computed from the image")
            self._set(node.output[0], self._conv(x, p, a, node) if p is not None else x)
            return
        if op == "ConvTranspose":
            if len(data) > 1:
                raise _NotLocal(f"{op} {name!r} has weights computed from the image")
            self._set(node.output[0], self._conv_t(x, p, a, node) if p is not None else x)
            return
        if op in ("DepthToSpace", "SpaceToDepth"):
            b = int(a["blocksize"])
            if x.size is None:
                self._set(node.output[0], x)
            elif op == "DepthToSpace":
                j: np.ndarray = np.arange(x.size * b) // b
                self._set(node.output[0], _Iv(x.size * b, x.lo[j], x.hi[j], x.res * b))
            else:
                if x.size % b:
                    self.valid = False
                k = x.size // b
                lo = x.lo[: k * b].reshape(k, b).min(1) if k else x.lo[:0]
                hi = x.hi[: k * b].reshape(k, b).max(1) if k else x.hi[:0]
                self._set(node.output[0], _Iv(k, lo, hi, x.res / b))
            return
        if op in ("Resize", "Upsample"):
            self._set(node.output[0], self._resize(x, p, a, node) if p is not None else x)
            return
        if op == "Pad":
            prm = self.an._pad_or_slice_params(node, self.ax)
            self._set(node.output[0], self._pad(x, prm, a.get("mode", "constant"), node) if prm else x)
            return
        if op == "Slice":
            prm = self.an._pad_or_slice_params(node, self.ax)
            if prm is None:
                self._set(node.output[0], x)
            else:
                s, e = prm
                k = x.size - s - e
                if k < 1:
                    self.valid = False
                    k = max(k, 0)
                self._set(node.output[0], _Iv(k, x.lo[s:s + k], x.hi[s:s + k], x.res))
            return
        if op in ("Transpose", *RESHAPING, "Tile"):
            self._layout(node, x)
            return
        if op in ("Concat", "Split"):
            axis = int(a.get("axis", 0))
            rank = len(first.shapes[0])
            if axis % rank in (first.pos.get("H"), first.pos.get("W")):
                raise _NotLocal(f"{op} {name!r} joins or splits the image along H/W")
            if op == "Concat":
                self._set(node.output[0], self._union(node, [iv for _, _, iv in data]))
            else:
                for o in node.output:
                    if o:
                        self._set(o, x)
            return
        if op == "Gather":
            axis = int(a.get("axis", 0)) % len(first.shapes[0])
            if axis in (first.pos.get("H"), first.pos.get("W")):
                raise _NotLocal(f"Gather {name!r} indexes the image along H/W")
            self._set(node.output[0], x)
            return
        if op in REDUCE or op in GLOBAL_POOL or op in ("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization",
                                                     "LpNormalization", "InstanceNormalization",
                                                     "GroupNormalization", "MeanVarianceNormalization"):
            axes = self._reduced_axes(node, first, a)
            if p is not None and p in axes:
                what = {"GlobalAveragePool": "global average pooling", "GlobalMaxPool": "global max pooling"}.get(
                    op, f"{op} over {self.ax}")
                self.an.global_reasons.append(f"{what} ({name!r}): every pixel depends on the whole image")
                union = _Iv(None, np.array([x.lo.min()]), np.array([x.hi.max()]), x.res)
                out_t = self.an.t.get(node.output[0])
                if out_t is not None and out_t.pos.get(self.ax) is not None:  # normalisation keeps the size
                    union = _Iv(x.size, np.full(x.size, x.lo.min()), np.full(x.size, x.hi.max()), x.res)
                self._set(node.output[0], union)
            else:
                self._set(node.output[0], x)
                for o in node.output[1:]:
                    if o:
                        self._set(o, x)
            return
        if op in ("MatMul", "Gemm", "MatMulInteger"):
            if len(data) > 1:
                raise _NotLocal(f"{op} {name!r} multiplies two activations (attention over positions)")
            k, _, _ = data[0]
            t = self.an.t[node.input[k]]
            rank = len(t.shapes[0])
            contracted = rank - 1 if k == 0 else rank - 2
            if contracted in (t.pos.get("H"), t.pos.get("W")):
                raise _NotLocal(f"{op} {name!r} mixes pixels along H/W")
            self._set(node.output[0], self.iv[node.input[k]])
            return
        raise _NotLocal(f"operator {op} ({name!r}) is not analysed: treated as global")

    # ---------------------------------------------------------------- rules

    def _union(self, node, ivs: list[_Iv]) -> _Iv:
        sized = [iv for iv in ivs if iv.size is not None and iv.size > 1]
        if not sized:
            size_one = [iv for iv in ivs if iv.size is not None]
            if size_one:
                lo = np.minimum.reduce([np.broadcast_to(iv.lo, 1) for iv in ivs])
                hi = np.maximum.reduce([np.broadcast_to(iv.hi, 1) for iv in ivs])
                return _Iv(1, lo, hi, size_one[0].res)
            return _Iv(None, np.array([min(int(iv.lo.min()) for iv in ivs)]),
                       np.array([max(int(iv.hi.max()) for iv in ivs)]), ivs[0].res)
        size = sized[0].size
        res = sized[0].res
        for iv in sized[1:]:
            if iv.size != size or iv.res != res:
                raise _NotLocal(f"{node.op_type} {node.name!r} combines activations of different resolutions")
        lo = np.full(size, BIG, dtype=np.int64)
        hi = np.full(size, -BIG, dtype=np.int64)
        for iv in ivs:
            lo = np.minimum(lo, iv.lo if iv.size == size else iv.lo.min())
            hi = np.maximum(hi, iv.hi if iv.size == size else iv.hi.max())
        return _Iv(size, lo, hi, res)

    def _kernel(self, node, a: dict, p: int) -> tuple[int, int, int, int, int]:
        """(kernel, stride, dilation, pad_begin, pad_end) along tensor axis p."""
        d = p - 2
        if d < 0:
            raise _NotLocal(f"{node.op_type} {node.name!r}: spatial axis in an unexpected place")
        ks = a.get("kernel_shape")
        if ks is None:
            w = self.an.t.get(node.input[1]) if len(node.input) > 1 else None
            if w is None or w.value is None:
                raise _NotLocal(f"{node.op_type} {node.name!r}: kernel size unknown")
            ks = list(w.value.shape[2:])
        nd = len(ks)
        strides = a.get("strides", [1] * nd)
        dil = a.get("dilations", [1] * nd)
        pads = a.get("pads", [0] * 2 * nd)
        k, s, dl = int(ks[d]), int(strides[d]), int(dil[d])
        pb, pe = int(pads[d]), int(pads[d + nd])
        auto = a.get("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            total = (k - 1) * dl + 1 - s if s == 1 else None
            if total is None:
                raise _NotLocal(f"{node.op_type} {node.name!r}: SAME padding with a stride")
            pb = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pe = total - pb
        elif auto == "VALID":
            pb = pe = 0
        return k, s, dl, pb, pe

    def _conv(self, x: _Iv, p: int, a: dict, node) -> _Iv:
        k, s, dl, pb, pe = self._kernel(node, a, p)
        e = (k - 1) * dl + 1
        n_in = x.length(node)
        span = n_in + pb + pe - e
        if span < 0:
            self.valid = False
            return _Iv(0, x.lo[:0], x.hi[:0], x.res / s)
        n_out = (-(-span // s) if a.get("ceil_mode", 0) else span // s) + 1
        j = np.arange(n_out, dtype=np.int64)[:, None] * s - pb + np.arange(k, dtype=np.int64)[None, :] * dl
        valid = (j >= 0) & (j < n_in)
        jc = np.clip(j, 0, max(0, n_in - 1))
        lo = np.where(valid, x.lo[jc], BIG).min(1)
        hi = np.where(valid, x.hi[jc], -BIG).max(1)
        return _Iv(n_out, lo, hi, x.res / s)

    def _conv_t(self, x: _Iv, p: int, a: dict, node) -> _Iv:
        k, s, dl, pb, pe = self._kernel(node, a, p)
        if "output_shape" in a:
            raise _NotLocal(f"ConvTranspose {node.name!r} with output_shape")
        nd = len(a.get("kernel_shape", [k, k]))
        op_ = int(a.get("output_padding", [0] * nd)[p - 2])
        e = (k - 1) * dl + 1
        n_in = x.length(node)
        n_out = s * (n_in - 1) + op_ + e - pb - pe
        o: np.ndarray = np.arange(n_out, dtype=np.int64)[:, None]
        t: np.ndarray = np.arange(k, dtype=np.int64)[None, :]
        num = o + pb - t * dl
        i = num // s
        valid = (num % s == 0) & (i >= 0) & (i < n_in)
        ic = np.clip(i, 0, max(0, n_in - 1))
        lo = np.where(valid, x.lo[ic], BIG).min(1)
        hi = np.where(valid, x.hi[ic], -BIG).max(1)
        return _Iv(n_out, lo, hi, x.res * s)

    def _resize(self, x: _Iv, p: int, a: dict, node) -> _Iv:
        f = self.an._resize_factors(node).get(self.ax)
        n_in = x.length(node)
        if not f or len(set(f)) > 1 or f[0] is None:
            # size follows the input: the output has the size of some earlier tensor
            y = self.an.t[node.output[0]]
            n_out = self._size_like(y)
            fr = Fraction(n_out, n_in) if n_in else Fraction(1)
            res_out = Fraction(1)  # the size (and grid) of the input image
        else:
            fr = f[0]
            n_out = int(math.floor(n_in * fr))
            res_out = x.res * fr
        if n_out < 1:
            self.valid = False
            return _Iv(0, x.lo[:0], x.hi[:0], res_out)
        mode = a.get("mode", "nearest")
        ctm = a.get("coordinate_transformation_mode", "asymmetric" if node.op_type == "Upsample" else "half_pixel")
        o: np.ndarray = np.arange(n_out, dtype=np.float64)
        scale = float(fr) if fr else 1.0
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            xs = (o + 0.5) / scale - 0.5
            if ctm == "pytorch_half_pixel" and n_out == 1:
                xs = np.zeros(1)
        elif ctm == "asymmetric":
            xs = o / scale
        elif ctm == "tf_half_pixel_for_nn":
            xs = (o + 0.5) / scale
        elif ctm == "align_corners":
            xs = o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(1)
        else:
            raise _NotLocal(f"Resize {node.name!r}: coordinate mode {ctm} is not analysed")
        if a.get("antialias", 0) and scale < 1:
            raise _NotLocal(f"Resize {node.name!r}: antialiased downscaling is not analysed")
        f0 = np.floor(xs).astype(np.int64)
        if mode == "nearest":
            lo_i, hi_i = f0, np.ceil(xs).astype(np.int64)
        elif mode == "linear":
            lo_i, hi_i = f0, f0 + 1
        elif mode == "cubic":
            lo_i, hi_i = f0 - 1, f0 + 2
        else:
            raise _NotLocal(f"Resize {node.name!r}: mode {mode} is not analysed")
        lo_i = np.clip(lo_i, 0, n_in - 1)
        hi_i = np.clip(hi_i, 0, n_in - 1)
        # min/max over the contiguous index range [lo_i, hi_i] (at most 4 wide)
        lo: np.ndarray = np.full(n_out, BIG, dtype=np.int64)
        hi: np.ndarray = np.full(n_out, -BIG, dtype=np.int64)
        for d in range(4):
            i = np.minimum(lo_i + d, hi_i)
            lo = np.minimum(lo, x.lo[i])
            hi = np.maximum(hi, x.hi[i])
        return _Iv(n_out, lo, hi, res_out)

    def _size_like(self, y: _T) -> int:
        """Analysis-size length of `y`'s axis when it equals the graph input's at every trial."""
        p = y.pos.get(self.ax)
        q = 2 if self.ax == "H" else 3
        xin = self.an.t[self.an.input]
        if p is not None and all(ys[p] == xs[q] for ys, xs in zip(y.shapes, xin.shapes)):
            return self.n
        self.unknown = True
        raise _NotLocal(f"a tensor's size along {self.ax} cannot be followed")

    def _pad(self, x: _Iv, prm: tuple[int, int], mode: str, node) -> _Iv:
        pb, pe = prm
        n_in = x.length(node)
        n_out = n_in + pb + pe
        if n_out < 1:
            self.valid = False
            return _Iv(0, x.lo[:0], x.hi[:0], x.res)
        o: np.ndarray = np.arange(n_out, dtype=np.int64) - pb
        inside = (o >= 0) & (o < n_in)
        if mode == "constant":
            src = np.clip(o, 0, n_in - 1)
            lo = np.where(inside, x.lo[src], BIG)
            hi = np.where(inside, x.hi[src], -BIG)
            return _Iv(n_out, lo, hi, x.res)
        if mode == "edge":
            src = np.clip(o, 0, n_in - 1)
        elif mode == "reflect":
            if n_in == 1:
                src = np.zeros_like(o)
            else:
                period = 2 * (n_in - 1)
                m = np.mod(o, period)
                src = np.where(m < n_in, m, period - m)
        elif mode == "wrap":
            src = np.mod(o, n_in)
        else:
            raise _NotLocal(f"Pad mode {mode} is not analysed")
        return _Iv(n_out, x.lo[src], x.hi[src], x.res)

    def _layout(self, node, x: _Iv) -> None:
        """Transpose / Reshape / Squeeze / Unsqueeze / Flatten / Tile that keep every pixel's
        values together (only non-spatial axes regrouped or moved)."""
        xt, yt = self.an.t[node.input[0]], self.an.t[node.output[0]]
        name = node.name or node.output[0]
        if not xt.shapes or not yt.shapes or yt.pos.get("mixed"):
            raise _NotLocal(f"{node.op_type} {name!r} regroups pixels (e.g. window partition or flattening)")
        if node.op_type == "Tile":
            for ax in ("H", "W"):
                p, q = xt.pos.get(ax), yt.pos.get(ax)
                if p is not None and (q != p or any(ys[q] != xs[p] for xs, ys in zip(xt.shapes, yt.shapes))):
                    raise _NotLocal(f"Tile {name!r} repeats the image along {ax}")
            self._set(node.output[0], x)
            return
        if node.op_type == "Transpose":
            perm = _attrs(node).get("perm") or list(range(len(xt.shapes[0])))[::-1]
            for ax in ("H", "W"):
                p = xt.pos.get(ax)
                if p is not None and perm.index(p) != yt.pos.get(ax):
                    raise _NotLocal(f"Transpose {name!r}: cannot follow {ax}")
            self._set(node.output[0], x)
            return
        if not _pointwise_reshape(xt, yt):
            raise _NotLocal(f"{node.op_type} {name!r} regroups pixels (e.g. window partition or flattening)")
        self._set(node.output[0], x)

    def _reduced_axes(self, node, t: _T, a: dict) -> set[int]:
        rank = len(t.shapes[0]) if t.shapes else 4
        op = node.op_type
        if op in GLOBAL_POOL or op in ("InstanceNormalization", "GroupNormalization"):
            return set(range(2, rank))
        if op in ("Softmax", "LogSoftmax", "Hardmax", "LpNormalization"):
            return {int(a.get("axis", -1)) % rank}
        if op == "LayerNormalization":
            return set(range(int(a.get("axis", -1)) % rank, rank))
        if op == "MeanVarianceNormalization":
            return {int(v) % rank for v in a.get("axes", [0, 2, 3])}
        if op in ("ArgMax", "ArgMin"):
            return {int(a.get("axis", 0)) % rank}
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            v = self.an._value(node.input[1])
            axes = None if v is None else [int(i) for i in np.asarray(v).ravel()]
        if axes is None or len(axes) == 0:
            return set() if a.get("noop_with_empty_axes", 0) else set(range(rank))
        return {int(i) % rank for i in axes}


def _pointwise_reshape(xt: _T, yt: _T) -> bool:
    """A reshape that moves no pixel: the H/W axes keep their sizes and order, and the
    element counts before, between and after them are unchanged at every trial."""
    for xs, ys in zip(xt.shapes, yt.shapes):
        a = [(p, k) for k in ("H", "W") if (p := xt.pos.get(k)) is not None]
        b = [(p, k) for k in ("H", "W") if (p := yt.pos.get(k)) is not None]
        if [k for _, k in sorted(a)] != [k for _, k in sorted(b)]:
            return False
        pa, pb = sorted(p for p, _ in a), sorted(p for p, _ in b)
        if any(xs[p] != ys[q] for p, q in zip(pa, pb)):
            return False

        def segments(shape, ps):
            cuts = [-1, *ps, len(shape)]
            return [int(np.prod(shape[cuts[i] + 1:cuts[i + 1]])) for i in range(len(cuts) - 1)]

        if segments(xs, pa) != segments(ys, pb):
            return False
    return True
