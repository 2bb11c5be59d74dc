"""Short quantization-aware fine-tuning of a QDQ graph against its fp32 model (CPU, minutes).

Post-training quantization fixes every int8 weight code and activation scale from statistics;
what remains is the interaction of many small errors through the network (SPAN's SiLU/sigmoid
attention, RLFN's ESA gate), which no per-layer rule sees. Here the all-int8 QDQ graph is run in
PyTorch (:class:`~edgesr.quant.torchgraph.TorchGraph`: the forward pass computes exactly the
rounding and saturation a runtime does) and, on LR patches from the calibration images, its

* int8 weight codes (straight-through rounding),
* conv biases (float; int32 ones are re-rounded on their scale when written back),
* optionally activation scales (per tensor, zero points fixed; off by default)

are trained for a fixed number of steps to reproduce the fp32 model's OUTPUT (distillation:
the target is what fp32 computes, never the ground-truth HR, so INT8 can only approach fp32, not
be trained beyond it). The evaluation images (budget check) are never seen.

Learning rates are per step with Adam, in the graph's own units: codes in weight quanta, biases
in output quanta (``s_in * s_w``). Measured on ETDS-L x4 (``cpu`` profile, docs/int8.md): codes
0.005 / biases 0.5 / scales frozen, 300 steps, lowers the held-out drop 0.109 -> 0.093 dB and
Set5 0.198 -> 0.133; learning the scales too (2e-3) or larger code/bias steps (0.02 / 2.0) made
it worse (0.157 / 0.123 held-out), and AdaRound's soft rounding (annealed, 300 steps) lost
0.43-0.99 dB when its rounding was made hard - it needs far more steps than a CPU budget allows.

The result is a :class:`LearnedQuant`, applied - like GPTQ's codes - to every QDQ candidate the
mixed-precision search builds, to exactly the tensors that candidate still quantizes.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import QuantizationError

METHODS = ("qat",)


@dataclass
class FinetuneReport:
    method: str
    steps: int
    batch: int
    patches: int
    patch_size: int
    seconds: float
    loss_start: float  # mean squared error vs the fp32 output over all patches, before
    loss_end: float  # ... after (hard int8 rounding both times)
    weights: int  # int8 weight tensors trained
    biases: int
    scales: int
    codes_changed: float  # share of int8 weight codes that differ from the starting graph
    scale_change: float  # largest |log| change of an activation scale

    def to_dict(self) -> dict:
        return asdict(self)


class LearnedQuant:
    """Learned int8 weight codes, biases and activation scales, keyed by initializer name."""

    def __init__(self, codes: dict[str, np.ndarray], biases: dict[str, np.ndarray], scales: dict[str, float]):
        self.codes, self.biases, self.scales = codes, biases, scales

    def apply(self, qmodel) -> None:
        """Write the learned values into `qmodel` (a QDQ ModelProto built from the same fp32 model)
        for the tensors it quantizes; float layers keep their fp32 weights and biases."""
        from onnx import TensorProto, numpy_helper

        g = qmodel.graph
        inits = {i.name: i for i in g.initializer}
        producer = {o: n for n in g.node for o in n.output}

        def put(name: str, value: np.ndarray) -> None:
            t = inits[name]
            t.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(t).dtype), name))

        for name, s in self.scales.items():
            if name in inits:
                put(name, np.asarray(s, dtype=np.float32).reshape(numpy_helper.to_array(inits[name]).shape))
        for name, c in self.codes.items():
            if name in inits and tuple(inits[name].dims) == c.shape:
                put(name, np.round(c))
        for n in g.node:
            if n.op_type != "Conv" or len(n.input) < 3:
                continue
            wdq = producer.get(n.input[1])
            if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in self.codes:
                continue  # a float layer: its fp32 weights and bias stay
            b = n.input[2]
            if b in inits and inits[b].data_type == TensorProto.FLOAT and b in self.biases:
                put(b, self.biases[b])
                continue
            bdq = producer.get(b)
            xdq = producer.get(n.input[0])
            if bdq is None or bdq.op_type != "DequantizeLinear" or bdq.input[0] not in self.biases or xdq is None:
                continue
            s_in = numpy_helper.to_array(inits[xdq.input[1]]).astype(np.float32).reshape(-1)[0]
            s_w = numpy_helper.to_array(inits[wdq.input[1]]).astype(np.float32)
            s_b = (s_in * s_w).astype(np.float32)  # the scale ONNX Runtime's QLinearConv assumes
            put(bdq.input[1], s_b.reshape(numpy_helper.to_array(inits[bdq.input[1]]).shape))
            codes = np.clip(np.round(self.biases[bdq.input[0]] / s_b.astype(np.float64)), -(2 ** 31), 2 ** 31 - 1)
            put(bdq.input[0], codes)


def finetune(qmodel, fp32_model, patches: np.ndarray, *, method: str = "qat", steps: int = 300, batch: int = 8,
             lr_codes: float = 0.005, lr_bias: float = 0.5, lr_scales: float = 0.0, weight_limit: int | None = None,
             seed: int = 0, threads: int | None = None, progress: bool = True) -> tuple[LearnedQuant, FinetuneReport]:
    """Fine-tune `qmodel` (QDQ ModelProto) to reproduce `fp32_model`'s output on `patches`.

    weight_limit: |code| bound of symmetric int8 weights (64 for 7-bit ``reduce_range``).
    Returns the learned values and a report whose ``loss_start`` / ``loss_end`` are the mean
    squared error against fp32 over ALL patches, before and after, with the hard int8 rounding.
    """
    if method not in METHODS:
        raise QuantizationError(f"unknown fine-tuning method {method!r}; known: {', '.join(METHODS)}")
    if steps < 1 or batch < 1:
        raise QuantizationError("fine-tuning needs steps >= 1 and batch >= 1")
    import torch
    from tqdm.auto import tqdm

    from .evaluate import make_session
    from .torchgraph import TorchGraph

    t0 = time.perf_counter()
    sess = make_session(fp32_model.SerializeToString(), threads)
    inp = fp32_model.graph.input[0].name
    target = np.concatenate([sess.run(None, {inp: patches[i:i + 8]})[0] for i in range(0, len(patches), 8)])
    graph = TorchGraph(qmodel, weight_limit=weight_limit)
    start_codes = {k: v.detach().clone() for k, v in graph.codes.items()}
    start_scales = {k: float(v.detach()) for k, v in graph.log_scales.items()}
    x_all = torch.from_numpy(np.ascontiguousarray(patches))
    y_all = torch.from_numpy(np.ascontiguousarray(target))

    def full_mse() -> float:
        with torch.no_grad():
            return float(np.mean([float(torch.mean((graph(x_all[i:i + 8]) - y_all[i:i + 8]) ** 2))
                                  for i in range(0, len(patches), 8)]))

    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        loss_start = full_mse()
        groups = graph.parameter_groups()
        params = [{"params": groups["bias"], "lr": lr_bias}, {"params": groups["codes"], "lr": lr_codes}]
        if lr_scales > 0:
            params.append({"params": groups["scales"], "lr": lr_scales})
        opt = torch.optim.Adam(params)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
        rng = np.random.default_rng(seed)
        tty = sys.stderr.isatty()
        bar = tqdm(range(steps), desc=f"INT8 fine-tuning ({method})", unit="step", disable=not (progress and tty),
                   leave=False)
        last_line = time.perf_counter()
        for step in bar:
            idx = torch.from_numpy(rng.choice(len(patches), min(batch, len(patches)), replace=False))
            loss = torch.mean((graph(x_all[idx]) - y_all[idx]) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress and not tty and time.perf_counter() - last_line > 30:
                print(f"INT8 fine-tuning ({method}): step {step + 1}/{steps}, batch loss {float(loss):.3e}",
                      file=sys.stderr, flush=True)
                last_line = time.perf_counter()
            elif progress and tty and step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.2e}")
        bar.close()
        loss_end = full_mse()
    finally:
        torch.set_num_threads(prev_threads)
    codes = graph.weight_codes()
    changed = sum(int((codes[k] - graph.weight_zp[k] != start_codes[k].round().numpy()).sum()) for k in codes)
    n_codes = sum(int(v.numel()) for v in start_codes.values())
    report = FinetuneReport(
        method=method, steps=steps, batch=batch, patches=len(patches), patch_size=int(patches.shape[-1]),
        seconds=round(time.perf_counter() - t0, 1), loss_start=loss_start, loss_end=loss_end, weights=len(codes),
        biases=len(graph.bias_delta), scales=len(graph.log_scales), codes_changed=changed / max(1, n_codes),
        scale_change=max([abs(float(v.detach()) - start_scales[n]) for n, v in graph.log_scales.items()], default=0.0))
    # frozen scales are not written back: exp(log(s)) in float32 need not give s again
    return LearnedQuant(codes, graph.bias_values(), graph.scale_values() if lr_scales > 0 else {}), report
