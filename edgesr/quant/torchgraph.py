"""Run an ONNX SR graph - fp32 or QDQ - in PyTorch, differentiably, with its parameters trainable.

Quantization-aware fine-tuning (:mod:`edgesr.quant.finetune`) needs gradients through the very
graph ONNX Runtime / OpenVINO will run: the QDQ model `quantize_static` built, after edgesr's
exact rewrites (equalization, zero-centring, concat split, PRelu decomposition). A generic
ONNX->PyTorch converter would still need every QuantizeLinear/DequantizeLinear replaced by a
straight-through fake quantizer and each learned value mapped back to the initializer it came
from; interpreting the graph node by node keeps that mapping trivial: every parameter is keyed
by the ONNX initializer name it replaces.

* ``DequantizeLinear`` of an int8 weight initializer -> a parameter in code units on the
  graph's own per-channel scale (fixed) and integer range: the forward pass sees exactly the
  int8 weight a runtime would, the gradient passes straight through the rounding;
* the bias of such a conv (an int32 initializer behind a DequantizeLinear, or a float one) ->
  a float parameter;
* ``QuantizeLinear`` / ``DequantizeLinear`` of an activation -> the same rounding and clamping
  to the integer type, with the scale initializer a learned parameter (one per name, so the Q
  and its DQs stay consistent) and the zero point fixed.

Only the op types SR graphs use are supported; anything else raises
:class:`~edgesr.errors.QuantizationError` naming the op (callers then skip fine-tuning).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import QuantizationError

_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2 ** 31), 2 ** 31 - 1)}


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _round_ste(x):
    return x + (x.round() - x).detach()


class TorchGraph:
    """A callable ``(x: Tensor) -> Tensor`` over an ONNX graph, with named trainable tensors.

    Trainable, each keyed by the ONNX initializer it replaces:

    ``codes``   int8/uint8 weight initializer -> Parameter in *code units* (``W / scale``, zero
                point removed), rounded straight-through and clamped to the integer type in the
                forward pass; starts at the graph's own codes;
    ``bias_delta``  bias initializer (int32 behind a DequantizeLinear, or the float bias of a
                Conv whose weight is int8) -> Parameter in units of that conv's output quantum
                ``s_in * s_w[c]`` (starts at 0; ``bias_value`` gives the float bias);
    ``log_scales``  scale initializer of a quantized activation -> Parameter (log of the scale;
                zero points stay fixed).
    """

    def __init__(self, model, weight_limit: int | None = None):
        """weight_limit: |code| bound of symmetric weights (127; 64 for 7-bit reduce_range)."""
        import torch
        from onnx import TensorProto, numpy_helper

        self.torch = torch
        g = model.graph
        self.nodes = list(g.node)
        if len(g.input) != 1 or len(g.output) != 1:
            raise QuantizationError("fine-tuning needs a graph with one input and one output")
        self.input_name = g.input[0].name
        self.output_name = g.output[0].name
        inits = {i.name: i for i in g.initializer}
        consts: dict[str, Any] = {name: numpy_helper.to_array(t) for name, t in inits.items()}
        for n in self.nodes:
            if n.op_type == "Constant":
                a = _attrs(n)
                if "value" not in a:
                    raise QuantizationError(f"fine-tuning: Constant {n.name} without a tensor value")
                consts[n.output[0]] = numpy_helper.to_array(a["value"])
        unsupported = sorted({n.op_type for n in self.nodes if n.op_type not in _OPS and n.op_type != "Constant"})
        if unsupported:
            raise QuantizationError(f"fine-tuning does not support op type(s) {', '.join(unsupported)}")
        producer = {o: n for n in self.nodes for o in n.output}

        self.codes: dict[str, Any] = {}
        self.weight_q: dict[str, tuple] = {}  # -> (scale, axis, lo, hi): codes clamp to [lo, hi] (zp removed)
        self.weight_zp: dict[str, np.ndarray] = {}
        self.bias_delta: dict[str, Any] = {}
        self.bias_base: dict[str, Any] = {}  # float bias at the start
        self.bias_unit: dict[str, Any] = {}  # output quantum per channel at the start
        self.log_scales: dict[str, Any] = {}
        self.dq_special: dict[str, tuple[str, str]] = {}  # DQ output -> ("weight"|"bias", init name)
        self.direct: dict[str, str] = {}  # float bias initializer read by a Conv -> its name

        def dq_scale(t: str):
            n = producer.get(t)
            if n is None or n.op_type != "DequantizeLinear":
                return None
            return np.asarray(consts[n.input[1]], dtype=np.float64)

        for n in self.nodes:
            if n.op_type == "QuantizeLinear":
                if np.size(consts[n.input[1]]) != 1:
                    raise QuantizationError(f"fine-tuning: activation scale {n.input[1]} is not per-tensor")
                s0 = float(np.asarray(consts[n.input[1]]).reshape(-1)[0])
                self.log_scales.setdefault(n.input[1], torch.nn.Parameter(
                    torch.tensor(math.log(max(s0, 1e-30)), dtype=torch.float32)))
        for n in self.nodes:
            if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
                continue
            q = consts[n.input[0]]
            s = np.asarray(consts[n.input[1]], dtype=np.float32)
            zp = consts[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros(np.shape(s), dtype=q.dtype)
            axis = _attrs(n).get("axis", 1) if np.size(s) > 1 else None
            dtype = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.int32): "int32"}.get(q.dtype)
            if dtype is None:
                raise QuantizationError(f"fine-tuning: {n.name} dequantizes {q.dtype}, not int8/uint8/int32")
            shape = [1] * q.ndim
            if axis is not None:
                shape[axis] = -1
            zp_b = np.reshape(zp, shape).astype(np.float64)
            if dtype == "int32":  # a bias: trained in float, re-rounded when written back
                base = (q.astype(np.float64) - zp_b) * np.reshape(s, shape)
                self._add_bias(n.input[0], base, np.reshape(s, -1).astype(np.float64) * np.ones(q.shape))
                self.dq_special[n.output[0]] = ("bias", n.input[0])
                continue
            lo, hi = _INT_RANGE[dtype]
            if weight_limit is not None and not np.any(zp):
                lo, hi = max(lo, -weight_limit), min(hi, weight_limit)
            self.codes[n.input[0]] = torch.nn.Parameter(torch.tensor(q.astype(np.float64) - zp_b, dtype=torch.float32))
            zp_t = torch.tensor(zp_b, dtype=torch.float32)
            self.weight_q[n.input[0]] = (torch.tensor(np.reshape(s, shape)), lo - zp_t, hi - zp_t)
            self.weight_zp[n.input[0]] = zp_b
            self.dq_special[n.output[0]] = ("weight", n.input[0])
        for n in self.nodes:  # float biases of convs whose input and weight are int8
            if n.op_type != "Conv" or len(n.input) < 3 or n.input[2] not in inits:
                continue
            if inits[n.input[2]].data_type != TensorProto.FLOAT:
                continue
            s_in, s_w = dq_scale(n.input[0]), dq_scale(n.input[1])
            if s_in is None or s_w is None:
                continue
            base = consts[n.input[2]].astype(np.float64)
            self._add_bias(n.input[2], base, float(np.reshape(s_in, -1)[0]) * np.reshape(s_w, -1) * np.ones(base.shape))
            self.direct[n.input[2]] = n.input[2]
        self.const = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in consts.items()
                      if k not in self.codes}

    def _add_bias(self, name: str, base: np.ndarray, unit: np.ndarray) -> None:
        torch = self.torch
        self.bias_base[name] = torch.tensor(base, dtype=torch.float32)
        self.bias_unit[name] = torch.tensor(unit, dtype=torch.float32)
        self.bias_delta[name] = torch.nn.Parameter(torch.zeros(base.shape, dtype=torch.float32))

    def bias(self, name: str):
        return self.bias_base[name] + self.bias_delta[name] * self.bias_unit[name]

    def weight(self, name: str):
        s, lo, hi = self.weight_q[name]
        return _round_ste(self.codes[name]).clamp(lo, hi) * s

    # -- parameters / results -----------------------------------------------------------
    def parameter_groups(self) -> dict[str, list]:
        return {"codes": list(self.codes.values()), "bias": list(self.bias_delta.values()),
                "scales": list(self.log_scales.values())}

    def weight_codes(self) -> dict[str, np.ndarray]:
        """Integer codes of every int8 weight as the graph stores them (zero point added back)."""
        with self.torch.no_grad():
            return {k: (self.codes[k].round().clamp(lo, hi)).numpy().astype(np.float64) + self.weight_zp[k]
                    for k, (_, lo, hi) in self.weight_q.items()}

    def scale_values(self) -> dict[str, float]:
        return {k: float(v.detach().exp()) for k, v in self.log_scales.items()}

    def bias_values(self) -> dict[str, np.ndarray]:
        with self.torch.no_grad():
            return {k: self.bias(k).numpy().astype(np.float64) for k in self.bias_delta}

    # -- execution ----------------------------------------------------------------------
    def __call__(self, x: Any) -> Any:
        env: dict[str, Any] = dict(self.const)
        env[self.input_name] = x
        for n in self.nodes:
            if n.op_type == "Constant":
                continue
            special = self.dq_special.get(n.output[0]) if n.op_type == "DequantizeLinear" else None
            if special is not None:
                env[n.output[0]] = self.bias(special[1]) if special[0] == "bias" else self.weight(special[1])
                continue
            ins = [self.bias(t) if t in self.direct else (env.get(t) if t else None) for t in n.input]
            try:
                outs = _OPS[n.op_type](self, n, ins)
            except QuantizationError:
                raise
            except Exception as e:  # noqa: BLE001 - say which node failed
                raise QuantizationError(f"fine-tuning: running {n.op_type} node {n.name} failed: "
                                        f"{str(e).splitlines()[0][:200]}") from None
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            for name, v in zip(n.output, outs):
                env[name] = v
        return env[self.output_name]


# --------------------------------------------------------------------------- op handlers

def _t(g, v):
    torch = g.torch
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(v)


def _ints(v) -> list[int]:
    return [int(i) for i in np.asarray(v.detach().numpy() if hasattr(v, "detach") else v).reshape(-1)]


def _quantize(g, n, ins):
    x, s_name = ins[0], n.input[1]
    zp = ins[2] if len(ins) > 2 and ins[2] is not None else g.torch.tensor(0, dtype=g.torch.uint8)
    dtype = {g.torch.int8: "int8", g.torch.uint8: "uint8"}[zp.dtype]
    qmin, qmax = _INT_RANGE[dtype]
    scale = g.log_scales[s_name].exp() if s_name in g.log_scales else _t(g, ins[1]).float()
    return (_round_ste(x / scale) + zp.float()).clamp(qmin, qmax)


def _dequantize(g, n, ins):
    q, s_name = ins[0], n.input[1]
    zp = ins[2] if len(ins) > 2 and ins[2] is not None else 0
    scale = g.log_scales[s_name].exp() if s_name in g.log_scales else _t(g, ins[1]).float()
    zp = zp.float() if hasattr(zp, "float") else float(zp)
    axis = _attrs(n).get("axis", 1)
    if scale.dim() == 1 and scale.numel() > 1:
        shape = [1] * q.dim()
        shape[axis] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if hasattr(zp, "reshape") and zp.dim() else zp
    return (q.float() - zp) * scale


def _pads(p: list[int]) -> tuple[list[int], bool]:
    half = len(p) // 2
    return p, p[:half] == p[half:]


def _conv(g, n, ins):
    F = g.torch.nn.functional
    a = _attrs(n)
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise QuantizationError(f"fine-tuning: Conv {n.name} uses auto_pad")
    k = w.shape[2:]
    pads = list(a.get("pads", [0] * (2 * len(k))))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        x = F.pad(x, [v for i in reversed(range(half)) for v in (pads[i], pads[i + half])])
        pads = [0] * len(pads)
    return F.conv2d(x, w, b, stride=a.get("strides", 1), padding=pads[:half], dilation=a.get("dilations", 1),
                    groups=a.get("group", 1))


def _clip(g, n, ins):
    x = ins[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else None
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else None
    a = _attrs(n)
    lo = float(lo) if lo is not None else a.get("min")
    hi = float(hi) if hi is not None else a.get("max")
    return x.clamp(min=lo, max=hi)


def _depth_to_space(g, n, ins):
    a = _attrs(n)
    bs = a["blocksize"]
    mode = a.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    x = ins[0]
    b, c, h, w = x.shape
    if mode == "CRD":
        return g.torch.nn.functional.pixel_shuffle(x, bs)
    y = x.reshape(b, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(b, c // (bs * bs), h * bs, w * bs)


def _resize(g, n, ins):
    F = g.torch.nn.functional
    a = _attrs(n)
    dec = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    mode = dec(a.get("mode", b"nearest"))
    ctm = dec(a.get("coordinate_transformation_mode", b"half_pixel"))
    x = ins[0]
    sizes = ins[3] if len(ins) > 3 and ins[3] is not None and _t(g, ins[3]).numel() else None
    scales = ins[2] if len(ins) > 2 and ins[2] is not None and _t(g, ins[2]).numel() else None
    if sizes is not None:
        size = _ints(sizes)[2:]
        kw = {"size": size}
    elif scales is not None:
        sc = [float(v) for v in _t(g, scales).reshape(-1)][2:]
        kw = {"scale_factor": sc}
    else:
        raise QuantizationError(f"fine-tuning: Resize {n.name} has neither scales nor sizes")
    if mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel"):
        return F.interpolate(x, mode="bilinear", align_corners=False, **kw)
    if mode == "linear" and ctm == "align_corners":
        return F.interpolate(x, mode="bilinear", align_corners=True, **kw)
    if mode == "nearest" and ctm == "asymmetric" and dec(a.get("nearest_mode", b"round_prefer_floor")) == "floor":
        return F.interpolate(x, mode="nearest", **kw)
    raise QuantizationError(f"fine-tuning: Resize {n.name} mode {mode}/{ctm} is not supported")


def _maxpool(g, n, ins):
    a = _attrs(n)
    k = a["kernel_shape"]
    pads = list(a.get("pads", [0] * (2 * len(k))))
    half = len(pads) // 2
    if pads[:half] != pads[half:] or a.get("ceil_mode", 0) or a.get("dilations", [1] * len(k)) != [1] * len(k):
        raise QuantizationError(f"fine-tuning: MaxPool {n.name} with asymmetric pads/ceil_mode/dilation")
    return g.torch.nn.functional.max_pool2d(ins[0], k, a.get("strides", k), pads[:half])


def _slice(g, n, ins):
    x = ins[0]
    starts, ends = _ints(ins[1]), _ints(ins[2])
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st != 1:
            raise QuantizationError(f"fine-tuning: Slice {n.name} with step {st}")
        dim = x.shape[ax]
        s = max(0, min(dim, s + dim if s < 0 else s))
        e = max(0, min(dim, e + dim if e < 0 else e))
        idx[ax] = slice(s, e)
    return x[tuple(idx)]


def _pad(g, n, ins):
    a = _attrs(n)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    p = _ints(ins[1])
    value = float(ins[2]) if len(ins) > 2 and ins[2] is not None else 0.0
    if len(ins) > 3 and ins[3] is not None:
        raise QuantizationError(f"fine-tuning: Pad {n.name} with axes")
    half = len(p) // 2
    if any(p[:2]) or any(p[half:half + 2]):
        raise QuantizationError(f"fine-tuning: Pad {n.name} pads batch/channel axes")
    torch_pads = [v for i in reversed(range(2, half)) for v in (p[i], p[i + half])]
    if mode == "constant":
        return g.torch.nn.functional.pad(ins[0], torch_pads, value=value)
    if mode in ("reflect", "edge"):
        return g.torch.nn.functional.pad(ins[0], torch_pads, mode="replicate" if mode == "edge" else mode)
    raise QuantizationError(f"fine-tuning: Pad {n.name} mode {mode}")


def _split(g, n, ins):
    a = _attrs(n)
    axis = a.get("axis", 0)
    if len(ins) > 1 and ins[1] is not None:
        parts = _ints(ins[1])
    elif "split" in a:
        parts = list(a["split"])
    else:
        k = len(n.output)
        parts = [ins[0].shape[axis] // k] * k
    return list(g.torch.split(ins[0], parts, dim=axis))


def _gather(g, n, ins):
    axis = _attrs(n).get("axis", 0)
    data, idx = _t(g, ins[0]), _t(g, ins[1]).long()
    if idx.dim() == 0:
        return data.select(axis, int(idx) if int(idx) >= 0 else int(idx) + data.shape[axis])
    return g.torch.index_select(data, axis, idx.reshape(-1)).reshape(
        *data.shape[:axis], *idx.shape, *data.shape[axis + 1:])


def _unsqueeze(g, n, ins):
    x = _t(g, ins[0])
    axes = _ints(ins[1]) if len(ins) > 1 else list(_attrs(n)["axes"])
    for ax in sorted(a if a >= 0 else a + x.dim() + len(axes) for a in axes):
        x = x.unsqueeze(ax)
    return x


def _squeeze(g, n, ins):
    x = _t(g, ins[0])
    axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(_attrs(n).get("axes", []))
    if not axes:
        return x.squeeze()
    for ax in sorted((a if a >= 0 else a + x.dim() for a in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _concat(g, n, ins):
    axis = _attrs(n)["axis"]
    ts = [_t(g, v) for v in ins]
    if all(t.dtype == g.torch.int64 for t in ts):
        return g.torch.cat([t.reshape(-1) if t.dim() == 0 else t for t in ts], dim=axis)
    return g.torch.cat(ts, dim=axis)


def _reshape(g, n, ins):
    x, shape = ins[0], _ints(ins[1])
    shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


def _cast(g, n, ins):
    to = _attrs(n)["to"]
    from onnx import TensorProto

    dt = {TensorProto.FLOAT: g.torch.float32, TensorProto.INT64: g.torch.int64, TensorProto.INT32: g.torch.int32}
    if to not in dt:
        raise QuantizationError(f"fine-tuning: Cast {n.name} to type {to}")
    return _t(g, ins[0]).to(dt[to])


def _binary(fn):
    def op(g, n, ins):
        a, b = _t(g, ins[0]), _t(g, ins[1])
        if a.is_floating_point() != b.is_floating_point():
            a, b = a.float(), b.float()
        return fn(a, b)
    return op


def _leaky(g, n, ins):
    return g.torch.nn.functional.leaky_relu(ins[0], _attrs(n).get("alpha", 0.01))


def _prelu(g, n, ins):
    x, slope = ins[0], _t(g, ins[1])
    return g.torch.where(x >= 0, x, x * slope)


def _reduce_mean(g, n, ins):
    a = _attrs(n)
    axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(a.get("axes", []))
    return ins[0].mean(dim=axes or None, keepdim=bool(a.get("keepdims", 1)))


def _avgpool(g, n, ins):
    a = _attrs(n)
    k = a["kernel_shape"]
    pads = list(a.get("pads", [0] * (2 * len(k))))
    half = len(pads) // 2
    if pads[:half] != pads[half:] or a.get("ceil_mode", 0):
        raise QuantizationError(f"fine-tuning: AveragePool {n.name} with asymmetric pads/ceil_mode")
    return g.torch.nn.functional.avg_pool2d(ins[0], k, a.get("strides", k), pads[:half],
                                            count_include_pad=bool(a.get("count_include_pad", 0)))


def _global_avgpool(g, n, ins):
    return ins[0].mean(dim=(2, 3), keepdim=True)


def _shape(g, n, ins):
    a = _attrs(n)
    s = list(ins[0].shape)[a.get("start", 0):a.get("end", None)]
    return g.torch.tensor(s, dtype=g.torch.int64)


_OPS = {
    "QuantizeLinear": _quantize, "DequantizeLinear": _dequantize, "Conv": _conv,
    "Relu": lambda g, n, i: g.torch.relu(i[0]), "Sigmoid": lambda g, n, i: g.torch.sigmoid(i[0]),
    "Tanh": lambda g, n, i: g.torch.tanh(i[0]), "LeakyRelu": _leaky, "PRelu": _prelu, "Clip": _clip,
    "Add": _binary(lambda a, b: a + b), "Sub": _binary(lambda a, b: a - b), "Mul": _binary(lambda a, b: a * b),
    "Div": _binary(lambda a, b: a / b if a.is_floating_point() else g_floor_div(a, b)),
    "Pow": _binary(lambda a, b: a ** b), "Sqrt": lambda g, n, i: g.torch.sqrt(i[0]),
    "Neg": lambda g, n, i: -i[0], "Abs": lambda g, n, i: i[0].abs(), "Exp": lambda g, n, i: i[0].exp(),
    "Max": lambda g, n, i: g.torch.stack(list(g.torch.broadcast_tensors(*i))).amax(0),
    "Min": lambda g, n, i: g.torch.stack(list(g.torch.broadcast_tensors(*i))).amin(0),
    "Identity": lambda g, n, i: i[0], "Concat": _concat, "Split": _split, "Slice": _slice, "Pad": _pad,
    "DepthToSpace": _depth_to_space, "Resize": _resize, "MaxPool": _maxpool, "AveragePool": _avgpool,
    "GlobalAveragePool": _global_avgpool, "ReduceMean": _reduce_mean,
    "Shape": _shape, "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Reshape": _reshape,
    "Cast": _cast, "Softmax": lambda g, n, i: g.torch.softmax(i[0], dim=_attrs(n).get("axis", -1)),
    "Transpose": lambda g, n, i: i[0].permute(*_attrs(n)["perm"]),
    "Erf": lambda g, n, i: g.torch.erf(i[0]), "HardSigmoid": lambda g, n, i: (
        _attrs(n).get("alpha", 0.2) * i[0] + _attrs(n).get("beta", 0.5)).clamp(0, 1),
}


def g_floor_div(a, b):
    return a // b


__all__ = ["TorchGraph"]
