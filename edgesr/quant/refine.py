"""Better int8 weights for a QDQ graph: error-compensating rounding + bias correction.

ONNX Runtime rounds every weight to the nearest int8 level of its channel's scale. For
SR nets that is not good enough where a row mixes one large tap with many small ones
(ETDS's residual stream: a centre tap ~1 that carries the picture next to taps ~0.01).
Rounding each of those independently costs ETDS-T x4 ~0.7 dB of Set5 Y-PSNR with the
activations still in float.

``gptq``            rounds the weights of each output channel one input column at a time
                    and spreads each rounding error over the not-yet-rounded columns so
                    that ``||(W_q - W) X||`` stays small for the layer's real inputs X (the
                    OBQ/GPTQ update, with ``H = E[x x^T]`` from the calibration patches).
                    The scale and the integer range are ORT's own, so the graph, its zero
                    points and types are unchanged - only int8 values differ.
``bias_correction`` subtracts the mean output shift the weight error causes,
                    ``(W_q - W) E[x]``, from the bias (float bias: exact; int32 bias:
                    re-rounded on its own scale).

Statistics come from the fp32 model on the calibration patches only (in all six colour
channel orders, see :func:`permute_colors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class ConvStats:
    H: np.ndarray  # E[x x^T] of the im2col'ed input, (Cin*kh*kw)^2
    mean: np.ndarray  # E[x], Cin*kh*kw
    count: int
    qmean: np.ndarray | None = None  # E[x] of the input as the graph quantizes it (None: not known)
    Hq: np.ndarray | None = None  # E[xq xq^T] of the quantized input's im2col rows (input_aware)
    C: np.ndarray | None = None  # Cov(x, xq) of the same rows
    Hq_cov: np.ndarray | None = None  # Cov(xq, xq)
    Cx: np.ndarray | None = None  # Cov(x, x) of the same rows


@dataclass
class RefineReport:
    gptq_layers: list[str] = field(default_factory=list)
    bias_corrected: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _conv_attrs(node) -> dict:
    a = {x.name: x for x in node.attribute}
    get = lambda k, d: list(a[k].ints) if k in a else d  # noqa: E731
    return {"group": a["group"].i if "group" in a else 1, "pads": get("pads", None),
            "strides": get("strides", [1, 1]), "dilations": get("dilations", [1, 1]),
            "auto_pad": a["auto_pad"].s.decode() if "auto_pad" in a else "NOTSET"}


def _unfold(x: np.ndarray, kh: int, kw: int, pads: list[int]) -> np.ndarray:
    """NCHW -> (N*H'*W', C*kh*kw) im2col for stride 1, dilation 1 (ONNX weight order)."""
    n, c, h, w = x.shape
    t, l, b, r = pads[0], pads[1], pads[2], pads[3]
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    ho, wo = h + t + b - kh + 1, w + l + r - kw + 1
    cols = np.stack([xp[:, :, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)], axis=2)
    return cols.transpose(0, 3, 4, 1, 2).reshape(-1, c * kh * kw)


def _unfold_rows(xp: np.ndarray, kh: int, kw: int, ho: int, wo: int, rows: np.ndarray) -> np.ndarray:
    """The im2col rows `rows` (flat indices into N x H' x W') of the padded input `xp`, without
    materializing the whole im2col matrix (ONNX weight order: channel, then kernel row/col)."""
    n_i, rem = np.divmod(rows, ho * wo)
    y, x = np.divmod(rem, wo)
    taps = [xp[n_i, :, y + i, x + j] for i in range(kh) for j in range(kw)]  # each (R, C)
    return np.stack(taps, axis=2).reshape(len(rows), -1)


def _unfold_mean_sum(xp: np.ndarray, kh: int, kw: int, ho: int, wo: int) -> np.ndarray:
    """Column sums of the im2col matrix of the padded input (ONNX weight order)."""
    c = xp.shape[1]
    out = np.empty((c, kh * kw), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            out[:, i * kw + j] = xp[:, :, i:i + ho, j:j + wo].sum(axis=(0, 2, 3), dtype=np.float64)
    return out.reshape(-1)


def conv_input_stats(model, patches: np.ndarray, threads: int | None = None, batch: int = 8,
                     max_rows: int = 16384, seed: int = 0, second_moments: bool = True,
                     input_quant: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
                     quantized_moments: bool = False) -> dict[str, ConvStats]:
    """Second moments of every plain (group 1, stride 1) Conv's input, from the fp32 model.

    At most `max_rows` im2col rows per conv (a fixed random subset of all positions) enter
    ``H``; the mean uses every position. Without `second_moments` (bias correction alone needs
    only the mean) ``H`` is an empty array and no im2col rows are built. `input_quant`: {tensor:
    its quantize-dequantize function}; the mean of each such conv input as quantized is kept too
    (``qmean``), and with `quantized_moments` the second moments ``Hq``, ``C``, ``Hq_cov`` of the
    same im2col rows as ``H``.
    """
    from onnx import numpy_helper

    from .evaluate import tensors_over_batches

    inits = {i.name: i for i in model.graph.initializer}
    convs = []
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        at = _conv_attrs(n)
        if at["group"] != 1 or at["strides"] != [1, 1] or at["dilations"] != [1, 1] or at["auto_pad"] != "NOTSET":
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if w.ndim != 4:
            continue
        convs.append((n, w.shape, at["pads"] or [0, 0, 0, 0]))
    if not convs:
        return {}
    names = sorted({n.input[0] for n, _, _ in convs})
    rng = np.random.default_rng(seed)
    n_batches = -(-len(patches) // batch)
    acc: dict[str, list] = {}
    qsums: dict[str, np.ndarray] = {}
    qmom: dict[str, list] = {}  # sums over the sampled rows: Xq^T Xq, X^T Xq, X, Xq
    for values in tensors_over_batches(model, names, patches, threads, chunk=batch):
        outs = dict(zip(names, values))
        for n, shape, pads in convs:
            x = outs[n.input[0]]
            kh, kw = shape[2], shape[3]
            t, l, b, r_ = pads[0], pads[1], pads[2], pads[3]
            xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r_))) if any(pads) else x
            ho, wo = x.shape[2] + t + b - kh + 1, x.shape[3] + l + r_ - kw + 1
            total = x.shape[0] * ho * wo
            H, s, c, r = acc.get(n.name, (0.0, 0.0, 0, 0))[:4]
            s = s + _unfold_mean_sum(xp, kh, kw, ho, wo)
            c += total
            xq = None
            if input_quant and n.input[0] in input_quant:
                xq = input_quant[n.input[0]](x)
                xq = np.pad(xq, ((0, 0), (0, 0), (t, b), (l, r_))) if any(pads) else xq
                qsums[n.name] = qsums.get(n.name, 0.0) + _unfold_mean_sum(xq, kh, kw, ho, wo)
            if not second_moments:
                acc[n.name] = [0.0, s, c, r]
                continue
            take = min(total, max(1, max_rows // n_batches))
            rows = rng.choice(total, take, replace=False) if take < total else np.arange(total)
            X = _unfold_rows(xp, kh, kw, ho, wo, rows)
            acc[n.name] = [H + (X.T @ X).astype(np.float64), s, c, r + len(X)]
            if quantized_moments and xq is not None:
                Xq: np.ndarray = _unfold_rows(xq, kh, kw, ho, wo, rows).astype(np.float64)
                X64: np.ndarray = X.astype(np.float64)
                m = qmom.get(n.name, [0.0, 0.0, 0.0, 0.0])
                qmom[n.name] = [m[0] + Xq.T @ Xq, m[1] + X64.T @ Xq, m[2] + X64.sum(0), m[3] + Xq.sum(0)]
    out = {k: ConvStats(H / r if r else np.empty((0, 0)), s / c, r, qsums[k] / c if k in qsums else None)
           for k, (H, s, c, r) in acc.items()}
    for k, (hq, cx, sx, sq) in qmom.items():
        r = out[k].count
        mx, mq = sx / r, sq / r
        out[k].Hq, out[k].C, out[k].Hq_cov = hq / r, cx / r - np.outer(mx, mq), hq / r - np.outer(mq, mq)
        out[k].Cx = out[k].H - np.outer(mx, mx)
    return out


def gptq_codes(W: np.ndarray, scale: np.ndarray, qmax: np.ndarray, H: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Integer codes for W (O x D) on the per-row grid `scale` (O,), |code| <= qmax (O,).

    Columns are rounded in order; each row's rounding error is spread over the remaining
    columns through the upper Cholesky factor of H^-1 (Frantar et al., GPTQ).
    """
    W = W.astype(np.float64).copy()
    d = W.shape[1]
    H = H.astype(np.float64).copy()
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += np.eye(d) * damp * float(np.mean(np.diag(H)))
    try:
        U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper, H^-1 = U^T U
    except np.linalg.LinAlgError:
        return np.clip(np.round(W / scale[:, None]), -qmax[:, None], qmax[:, None])
    Q = np.zeros_like(W)
    for j in range(d):
        q = np.clip(np.round(W[:, j] / scale), -qmax, qmax)
        Q[:, j] = q
        err = (W[:, j] - q * scale) / U[j, j]
        W[:, j + 1:] -= np.outer(err, U[j, j + 1:])
    return Q


# Fitted weights are used where they cut the layer's output error (on the calibration rows) to at most
# this share of the plain weights' error: elsewhere the fit changes weights for nothing measurable, and
# those small changes added up to a worse held-out score (RLFN: 0.089 -> 0.097 dB with every layer fitted).
INPUT_AWARE_MAX_RATIO = 0.9


def input_aware_fit(W: np.ndarray, st: ConvStats, damp: float = 1e-4) -> tuple[np.ndarray, float]:
    """(fitted weights, their output error / the plain weights' output error) for a layer reading the
    quantized input whose moments `st` holds (centred errors: the bias absorbs the means)."""
    Hq_cov, C = st.Hq_cov, st.C
    assert Hq_cov is not None and C is not None
    V = input_aware_target(W, Hq_cov, C, damp)

    # E||V xq - W x||^2 (centred) = tr(V Cq V^T) - 2 tr(V C^T W^T) + tr(W Cx W^T), Cx = Cov(x) of the same rows
    def err(A: np.ndarray) -> float:
        return float(np.sum((A @ Hq_cov) * A) - 2 * np.sum((A @ C.T) * W))

    base = float(np.sum((W @ st.Cx) * W)) if st.Cx is not None else 0.0
    plain, fitted = err(W) + base, err(V) + base
    return V, (fitted / plain if plain > 0 else 1.0)


def input_aware_target(W: np.ndarray, Hq_cov: np.ndarray, C: np.ndarray, damp: float = 1e-4) -> np.ndarray:
    """argmin_V E||V (xq - E xq) - W (x - E x)||^2 = W C Hq_cov^-1 for W (O x D), C = Cov(x, xq),
    Hq_cov = Cov(xq) (damp x its mean diagonal added; GPTQ's 1 % would shrink every layer's weights)."""
    d = Hq_cov.shape[0]
    H = Hq_cov + np.eye(d) * damp * max(float(np.mean(np.diag(Hq_cov))), 1e-30)
    try:
        return np.linalg.solve(H, (W @ C).T).T  # H symmetric
    except np.linalg.LinAlgError:
        return W


COLOR_PERMUTATIONS = ((0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2))


def permute_colors(patches: np.ndarray) -> np.ndarray:
    """The patches in all 6 channel orders.

    GPTQ pushes rounding error into input directions the calibration data rarely uses. In
    natural photos R, G and B are strongly correlated, so it hides error in colour
    differences - and strongly coloured content then pays for it (Set5 'bird' lost 0.6 dB
    with 7-bit weights). Statistics over all channel orders keep the correlations
    between neighbouring pixels but make no colour direction special.
    """
    return np.concatenate([patches[:, list(p)] for p in COLOR_PERMUTATIONS])


class WeightRefiner:
    """Applies GPTQ rounding and/or bias correction to QDQ models built from `fp32_model`.

    Codes are computed once per layer (they depend only on the layer's weights, ORT's
    scale and the calibration statistics) and reused for every mixed-precision candidate.
    """

    def __init__(self, fp32_model, patches: np.ndarray, *, gptq: bool = True, bias_correction: bool = True,
                 damp: float = 0.01, color_permutations: bool = True, threads: int | None = None,
                 input_quant: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
                 input_aware: bool = False, input_aware_damp: float = 1e-4):
        """`input_quant`: {conv input tensor: the graph's quantize-dequantize of it}. Where given, bias
        correction also removes the mean output shift of that input's quantization error (clipped
        ranges, quant/range_search.py, shift the mean): ``b -= W_q E[q(x)] - W E[x]``.
        `input_aware` (needs `input_quant` and `gptq`): the int8 weights are rounded from the weights that best
        map the QUANTIZED input to the fp32 output, ``argmin_V E||V q(x) - W x||^2 = W Cov(x, q(x)) Cov(q(x))^-1``
        (least squares on the calibration rows, `input_aware_damp` x mean variance added to the diagonal),
        with GPTQ on ``E[q(x) q(x)^T]``: the weights then undo the part of the input's quantization
        error that is predictable from it (docs/int8.md, "RLFN's two 3x3 convs")."""
        from onnx import numpy_helper

        self.gptq, self.bias_correction, self.damp = gptq, bias_correction, damp
        if color_permutations and patches.ndim == 4 and patches.shape[1] == 3:
            patches = permute_colors(patches)
        self.input_aware = bool(input_aware and gptq and input_quant)
        self.input_aware_damp = input_aware_damp
        self.input_aware_ratio: dict[str, float] = {}  # fitted / plain output error of the layer (calibration rows)
        self.input_aware_layers: list[str] = []  # where the fitted weights were used
        self.stats = (conv_input_stats(fp32_model, patches, threads, second_moments=gptq,
                                       input_quant=input_quant if (bias_correction or self.input_aware) else None,
                                       quantized_moments=self.input_aware)
                      if (gptq or bias_correction) else {})
        inits = {i.name: i for i in fp32_model.graph.initializer}
        self.fp32 = {}
        for n in fp32_model.graph.node:
            if n.name in self.stats:
                b = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] in inits else None
                self.fp32[n.name] = (numpy_helper.to_array(inits[n.input[1]]).astype(np.float64), b)
        self._codes: dict[str, np.ndarray] = {}

    def apply(self, qmodel) -> RefineReport:
        """Rewrite int8 weight codes / biases of `qmodel` (a QDQ ModelProto) in place."""
        from onnx import numpy_helper

        rep = RefineReport()
        if not (self.gptq or self.bias_correction):
            return rep
        inits = {i.name: i for i in qmodel.graph.initializer}
        producer = {o: n for n in qmodel.graph.node for o in n.output}
        for n in qmodel.graph.node:
            if n.op_type != "Conv" or n.name not in self.stats:
                continue
            dq = producer.get(n.input[1])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue  # layer kept float
            q_init = inits[dq.input[0]]
            q = numpy_helper.to_array(q_init)
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
            zp = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else None
            W, b = self.fp32[n.name]
            if zp is not None and np.any(zp != 0):
                rep.skipped[n.name] = "asymmetric weights"
                continue
            o = W.shape[0]
            if scale.size == 1:  # per-tensor, or per-channel of a 1-output conv: shape () or (1,)
                scale = np.full(o, scale.reshape(-1)[0])
            if scale.shape != (o,):
                rep.skipped[n.name] = "unexpected scale shape"
                continue
            if self.gptq:
                if n.name not in self._codes:
                    qmax = np.abs(q.reshape(o, -1)).max(1).astype(np.float64)
                    info = np.iinfo(q.dtype)
                    qmax = np.maximum(qmax, 1)
                    st = self.stats[n.name]
                    target = None
                    if self.input_aware and st.Hq is not None and st.C is not None and st.Hq_cov is not None:
                        target, ratio = input_aware_fit(W.reshape(o, -1), st, self.input_aware_damp)
                        self.input_aware_ratio[n.name] = ratio
                        if not ratio <= INPUT_AWARE_MAX_RATIO:
                            target = None
                    if target is not None and st.Hq is not None:
                        codes = gptq_codes(target, scale, qmax, st.Hq, self.damp)
                        self.input_aware_layers.append(n.name)
                    else:
                        codes = gptq_codes(W.reshape(o, -1), scale, qmax, st.H, self.damp)
                    self._codes[n.name] = np.clip(codes, info.min, info.max).astype(q.dtype).reshape(q.shape)
                q = self._codes[n.name]
                q_init.CopyFrom(numpy_helper.from_array(q, q_init.name))
                rep.gptq_layers.append(n.name)
            if self.bias_correction and b is not None and len(n.input) > 2:
                st = self.stats[n.name]
                Wq = q.reshape(o, -1).astype(np.float64) * scale[:, None]
                shift = (Wq - W.reshape(o, -1)) @ st.mean
                if st.qmean is not None:
                    shift = shift + Wq @ (st.qmean - st.mean)
                if _correct_bias(qmodel, n, inits, producer, b.astype(np.float64) - shift):
                    rep.bias_corrected.append(n.name)
        return rep


def _correct_bias(qmodel, node, inits, producer, new_bias: np.ndarray) -> bool:
    from onnx import numpy_helper

    name = node.input[2]
    if name in inits:  # float bias
        t = inits[name]
        t.CopyFrom(numpy_helper.from_array(new_bias.astype(numpy_helper.to_array(t).dtype), name))
        return True
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        return False
    q = inits[dq.input[0]]
    s = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    codes = np.clip(np.round(new_bias / s), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    q.CopyFrom(numpy_helper.from_array(codes, q.name))
    return True
