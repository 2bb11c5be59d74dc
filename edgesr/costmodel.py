"""Cost model: parameters, MACs per output pixel, memory traffic, measured machine roofs.

MACs are counted from the model itself: forward hooks on every ``nn.Conv2d``,
``nn.ConvTranspose2d`` and ``nn.Linear`` during one forward pass (bias additions,
activations, PixelShuffle and adds are not MACs). A ``TorchFunctionMode`` pass counts the
same operators at the functional level too; ``hook_coverage`` < 1 means part of the
compute runs through functional calls the hooks cannot see (e.g. a training-form block
calling ``F.conv2d`` with fixed Sobel masks), and the hook count is then a lower bound.

Memory traffic (for the roofline's arithmetic intensity) is a per-layer model: each
counted layer reads its input and weights and writes its output once, at ``elem_bytes``
per element (4 for fp32, 1 for int8). Real runtimes fuse activations into convs and keep
small tensors in cache, so this is a plausible DRAM-traffic estimate, not a measurement.

Machine roofs are measured in-process: fp32 GEMM (torch.mm and numpy.matmul, best of
a few sizes), int8 GEMM (ONNX Runtime MatMulInteger, uint8 x int8 -> int32, the MLAS
kernel QLinearConv uses) and a STREAM-like copy (bytes read + bytes written per second).
Each roof is the fastest run of its micro-benchmark (medians are recorded too): on a shared
machine the median mostly measures the other tenants.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class LayerCost:
    name: str
    kind: str  # Conv2d / ConvTranspose2d / Linear
    macs: int
    params: int
    in_elems: int
    out_elems: int
    weight_elems: int


@dataclass
class CostReport:
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int  # every parameter of the module
    macs: int  # hooks: Conv2d / ConvTranspose2d / Linear, whole forward at input_shape
    functional_macs: int  # conv2d / conv_transpose2d / linear calls seen by a TorchFunctionMode
    layers: list[LayerCost] = field(default_factory=list)

    @property
    def output_pixels(self) -> int:
        n, _, h, w = self.output_shape
        return n * h * w

    @property
    def macs_per_output_pixel(self) -> float:
        return self.macs / self.output_pixels

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def hook_coverage(self) -> float:
        return self.macs / self.functional_macs if self.functional_macs else 1.0

    def traffic_bytes(self, elem_bytes: int = 4) -> int:
        return elem_bytes * sum(l.in_elems + l.out_elems + l.weight_elems for l in self.layers)

    def arithmetic_intensity(self, elem_bytes: int = 4) -> float:
        """FLOP per byte of the per-layer traffic model."""
        b = self.traffic_bytes(elem_bytes)
        return self.flops / b if b else float("inf")

    def scaled_to(self, lr_hw: tuple[int, int], batch: int = 1) -> "CostReport":
        """The same model at another input size (convs are linear in the pixel count)."""
        n, c, h, w = self.input_shape
        f = batch * lr_hw[0] * lr_hw[1] / (n * h * w)
        on, oc, oh, ow = self.output_shape
        s = oh // h
        layers = [LayerCost(l.name, l.kind, round(l.macs * f), l.params, round(l.in_elems * f), round(l.out_elems * f),
                            l.weight_elems) for l in self.layers]
        return CostReport((batch, c, *lr_hw), (batch, oc, lr_hw[0] * s, lr_hw[1] * s), self.params,
                          round(self.macs * f), round(self.functional_macs * f), layers)

    def to_dict(self, layers: bool = False) -> dict:
        d = {"input_shape": list(self.input_shape), "output_shape": list(self.output_shape), "params": self.params,
             "macs": self.macs, "macs_per_output_pixel": round(self.macs_per_output_pixel, 2),
             "gflops_per_inference": round(self.flops / 1e9, 4), "functional_macs": self.functional_macs,
             "hook_coverage": round(self.hook_coverage, 4),
             "traffic_mb_fp32": round(self.traffic_bytes(4) / 1e6, 2),
             "arithmetic_intensity_fp32": round(self.arithmetic_intensity(4), 3),
             "arithmetic_intensity_int8": round(self.arithmetic_intensity(1), 3)}
        if layers:
            d["layers"] = [asdict(l) for l in self.layers]
        return d


def count_params(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def count_macs(module, input_shape: Sequence[int] = (1, 3, 64, 64)) -> CostReport:
    """Count MACs of one forward pass at `input_shape` (NCHW) with forward hooks."""
    import torch
    from torch import nn

    m = copy.deepcopy(module).eval().float().cpu()
    layers: list[LayerCost] = []
    handles = []

    def hook(mod, inputs, output):
        x = inputs[0]
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            macs = output.numel() * (mod.in_channels // mod.groups) * kh * kw
            kind = "Conv2d"
        elif isinstance(mod, nn.ConvTranspose2d):
            kh, kw = mod.kernel_size
            macs = x.numel() * (mod.out_channels // mod.groups) * kh * kw
            kind = "ConvTranspose2d"
        else:
            macs = output.numel() * mod.in_features
            kind = "Linear"
        layers.append(LayerCost(names[mod], kind, int(macs), count_params(mod), int(x.numel()), int(output.numel()),
                                int(mod.weight.numel())))

    names = {}
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            names[mod] = name or type(mod).__name__
            handles.append(mod.register_forward_hook(hook))
    x = torch.rand(tuple(int(v) for v in input_shape))
    counter = _functional_counter()
    try:
        with torch.inference_mode(), counter:
            y = m(x)
    finally:
        for h in handles:
            h.remove()
    return CostReport(tuple(x.shape), tuple(y.shape), count_params(m), int(sum(l.macs for l in layers)),
                      counter.macs, layers)


def _functional_counter():
    """A TorchFunctionMode counting MACs of conv2d / conv_transpose2d / linear calls."""
    import torch

    class FunctionalCounter(torch.overrides.TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.macs = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = getattr(func, "__name__", "")
            if name in ("conv2d", "conv_transpose2d", "linear"):
                x = args[0] if args else kwargs["input"]
                w = args[1] if len(args) > 1 else kwargs["weight"]
                if name == "conv2d":  # weight (out, in/groups, kh, kw)
                    self.macs += int(out.numel() * int(np.prod(w.shape[1:])))
                elif name == "conv_transpose2d":  # weight (in, out/groups, kh, kw)
                    self.macs += int(x.numel() * int(np.prod(w.shape[1:])))
                else:
                    self.macs += int(out.numel() * w.shape[-1])
            return out

    return FunctionalCounter()


# =========================================================================== machine roofs

def measure_gemm_fp32(threads: int | None = None, sizes: Sequence[int] = (256, 512, 1024),
                      seconds: float = 0.4) -> dict:
    """Best fp32 GEMM rate (GFLOP/s) of torch.mm and numpy.matmul over `sizes` (square)."""
    import torch

    from .timing import TimingPolicy, time_callable

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    pol = TimingPolicy(warmup_seconds=0.1, min_runs=3, min_seconds=seconds, max_runs=200)
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            a, b = torch.rand(n, n), torch.rand(n, n)
            out = torch.empty(n, n)
            st = time_callable(lambda: torch.mm(a, b, out=out), pol)
            rows.append({"lib": "torch.mm", "n": n, "median_ms": round(st.median_ms, 3),
                         "gflops": round(2 * n**3 / (st.median_ms / 1e3) / 1e9, 2),
                         "best_gflops": round(2 * n**3 / (st.min_ms / 1e3) / 1e9, 2)})
            an, bn = a.numpy(), b.numpy()
            st = time_callable(lambda: np.matmul(an, bn), pol)
            rows.append({"lib": "numpy.matmul", "n": n, "median_ms": round(st.median_ms, 3),
                         "gflops": round(2 * n**3 / (st.median_ms / 1e3) / 1e9, 2),
                         "best_gflops": round(2 * n**3 / (st.min_ms / 1e3) / 1e9, 2)})
    finally:
        torch.set_num_threads(old)
    # The roof is the best single run: on a shared machine the median mostly measures the other
    # tenants; the fastest run is the closest to what the cores can do when they are ours.
    best = max(rows, key=lambda r: r["best_gflops"])
    med = max(rows, key=lambda r: r["gflops"])
    return {"peak_gflops": best["best_gflops"], "peak_from": f"{best['lib']} n={best['n']} (fastest run)",
            "median_gflops": med["gflops"], "threads": threads or old, "rows": rows}


def measure_gemm_int8(threads: int | None = None, n: int = 1024, seconds: float = 0.4) -> dict:
    """int8 GEMM rate (GOP/s, 2 ops per multiply-accumulate) of ONNX Runtime MatMulInteger
    (uint8 activations x int8 weights -> int32), the MLAS path of QLinearConv on CPUs."""
    from onnx import TensorProto, helper, numpy_helper

    from .backends.ort_session import ort_session
    from .timing import TimingPolicy, time_callable

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "mmi",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
        initializer=[numpy_helper.from_array(w, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort_session(model, threads=threads, graph_opt="all")
    a = rng.integers(0, 256, size=(n, n), dtype=np.uint8)
    st = time_callable(lambda: sess.run(None, {"A": a}),
                       TimingPolicy(warmup_seconds=0.1, min_runs=3, min_seconds=seconds, max_runs=200))
    return {"peak_gops": round(2 * n**3 / (st.min_ms / 1e3) / 1e9, 2),
            "median_gops": round(2 * n**3 / (st.median_ms / 1e3) / 1e9, 2), "n": n,
            "median_ms": round(st.median_ms, 3), "min_ms": round(st.min_ms, 3), "threads": threads,
            "op": "ORT MatMulInteger u8 x s8 (peak: fastest run)"}


def measure_stream_copy(threads: int | None = None, mbytes: int = 256, seconds: float = 0.4) -> dict:
    """STREAM-like copy bandwidth (GB/s counting bytes read + bytes written) of a buffer much
    larger than the last-level cache: torch copy_ (multi-threaded) and numpy.copyto."""
    import torch

    from .timing import TimingPolicy, time_callable

    n = mbytes * 2**20 // 4
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    pol = TimingPolicy(warmup_seconds=0.1, min_runs=3, min_seconds=seconds, max_runs=100)
    rows: list[dict[str, Any]] = []
    a = b = None
    try:
        a, b = torch.ones(n), torch.empty(n)
        an, bn = a.numpy(), b.numpy()
        for lib, fn in (("torch copy_", lambda: b.copy_(a)), ("numpy.copyto", lambda: np.copyto(bn, an))):
            st = time_callable(fn, pol)
            rows.append({"lib": lib, "gbs": round(2 * 4 * n / (st.median_ms / 1e3) / 1e9, 2),
                         "best_gbs": round(2 * 4 * n / (st.min_ms / 1e3) / 1e9, 2)})
    finally:
        torch.set_num_threads(old)
        a = b = None  # free the buffers (the closures above are done with them)
    best = max(rows, key=lambda r: r["best_gbs"])
    return {"bandwidth_gbs": best["best_gbs"], "from": f"{best['lib']} (fastest run)",
            "median_gbs": max(r["gbs"] for r in rows), "buffer_mb": mbytes, "rows": rows}


def measure_roofs(threads: int | None = None, seconds: float = 0.4) -> dict:
    t0 = time.perf_counter()
    out: dict[str, Any] = {"fp32": measure_gemm_fp32(threads, seconds=seconds),
                           "int8": measure_gemm_int8(threads, seconds=seconds),
                           "memory": measure_stream_copy(threads, seconds=seconds)}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def achieved(cost: CostReport, median_ms: float, roofs: dict | None = None, precision: str = "fp32") -> dict:
    """Achieved GFLOP/s (2 x counted MACs / median time) and efficiency vs the measured roof."""
    gflops = cost.flops / (median_ms / 1e3) / 1e9
    d = {"gflops": round(gflops, 2)}
    if roofs:
        peak = roofs["int8"]["peak_gops"] if precision == "int8" else roofs["fp32"]["peak_gflops"]
        bw = roofs["memory"]["bandwidth_gbs"]
        ai = cost.arithmetic_intensity(1 if precision == "int8" else 4)
        bound = min(peak, bw * ai)
        d |= {"peak": peak, "efficiency_vs_peak": round(gflops / peak, 4), "roofline_bound": round(bound, 2),
              "efficiency_vs_roofline": round(gflops / bound, 4), "arithmetic_intensity": round(ai, 3)}
    return d


def plot_roofline(points: Sequence[dict], roofs: dict, path, title: str = "Roofline") -> None:
    """points: dicts with label, ai (FLOP/byte), gflops, group (legend entry), precision.
    Draws the measured fp32 and int8 compute roofs and the measured copy-bandwidth roof."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bw = roofs["memory"]["bandwidth_gbs"]
    p32 = roofs["fp32"]["peak_gflops"]
    p8 = roofs["int8"]["peak_gops"]
    ais = [p["ai"] for p in points] or [1.0]
    x = np.logspace(np.log10(min(ais + [p32 / bw]) / 4), np.log10(max(ais + [p8 / bw]) * 4), 200)
    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    ax.plot(x, np.minimum(p32, bw * x), "k-", lw=1.5, label=f"fp32 roof: GEMM {p32:.0f} GFLOP/s, copy {bw:.1f} GB/s")
    ax.plot(x, np.minimum(p8, bw * x), "k--", lw=1, label=f"int8 roof: MatMulInteger {p8:.0f} GOP/s")
    groups = sorted({p.get("group", "") for p in points})
    markers = dict(zip(groups, "osD^v<>ph*"))
    for g in groups:
        ps = [p for p in points if p.get("group", "") == g]
        ax.scatter([p["ai"] for p in ps], [p["gflops"] for p in ps], marker=markers[g], s=36, label=g, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, per-layer traffic model)")
    ax.set_ylabel("achieved GFLOP/s (int8: GOP/s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    # beside the plot: inside it, the legend hides points near the roofs' corner
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    from .plotting import place_labels, plain_log_ticks

    plain_log_ticks(ax)
    place_labels(ax, [(p["ai"], p["gflops"], p["label"]) for p in points if p.get("label")])
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
