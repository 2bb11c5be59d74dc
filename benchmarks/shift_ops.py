"""Compare the four exportable forms of a channel-group shift (edgesr/shift.py) on ORT CPU.

    python benchmarks/shift_ops.py [--threads 1] [--seconds 1.0] [--size 180x320]

For each case (SCNet Shift8 on 64 channels, ELAN shift on 120 channels, a GhostSR-style single
shift on 32 channels) and each form ("slice", "roll", "conv", "index"), a tiny graph is exported
- the shift alone, and the shift between two 1x1 convs as the SCNet/ELAN blocks use it - and
simplified with onnxslim (as edgesr.export does), timed with ONNX Runtime (CPU, all graph
optimizations), interleaved so machine noise hits all forms alike. Writes benchmarks/results/shift_ops.json and shift_ops.md.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgesr.backends.ort_runner import OrtRunner  # noqa: E402
from edgesr.bench import TimingPolicy, machine_info, time_interleaved  # noqa: E402
from edgesr.fsutil import atomic_write_text  # noqa: E402
from edgesr.shift import MODES, ChannelShift, elan_groups, shift8_groups  # noqa: E402
from edgesr.sizes import parse_hw  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

CASES = {
    "scnet-shift8-c64": (64, shift8_groups(64)),
    "elan-shift-c120": (120, elan_groups(120)),
    "ghost-single-c32": (32, [(0, 32, 1, -1)]),
}


class InBlock(nn.Module):
    """conv1x1 -> shift -> ReLU -> conv1x1, the SCNet residual-block body."""

    def __init__(self, channels: int, groups, mode: str):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(channels, channels, 1)
        self.s = ChannelShift(groups, mode)
        self.b = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return self.b(torch.relu(self.s(self.a(x))))


def export(module: nn.Module, channels: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(1, channels, 16, 20),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {2: "h", 3: "w"}, "output": {2: "h", 3: "w"}})
    model = onnx.load_model_from_string(buf.getvalue())
    try:  # simplify as edgesr.export does
        import onnxslim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnxslim.slim(model) or model
    except ImportError:
        pass
    return model.SerializeToString()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=1.0, help="min seconds per form")
    ap.add_argument("--size", default="180x320", help="HxW of the feature map")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    h, w = parse_hw(args.size, "--size")
    torch.set_num_threads(1)
    policy = TimingPolicy(warmup_seconds=0.3, min_runs=10, min_seconds=args.seconds, max_runs=500)
    rows = []
    for case, (c, groups) in CASES.items():
        x = np.random.default_rng(0).random((1, c, h, w), dtype=np.float32)
        for context in ("alone", "in-block"):
            runners, ops, ref = {}, {}, None
            for mode in MODES:
                mod = ChannelShift(groups, mode) if context == "alone" else InBlock(c, groups, mode)
                data = export(mod, c)
                model = onnx.load_model_from_string(data)
                ops[mode] = dict(Counter(n.op_type for n in model.graph.node))
                r = OrtRunner(data, threads=args.threads)
                y = r.run(x)
                with torch.inference_mode():
                    t = mod(torch.from_numpy(x)).numpy()
                err = float(np.abs(y - t).max())
                if ref is None:
                    ref = y
                runners[mode] = (r, err, float(np.abs(y - ref).max()))
            stats = time_interleaved({m: (lambda r=r: r.run(x)) for m, (r, _, _) in runners.items()}, policy)
            best = min(stats, key=lambda m: stats[m].median_ms)
            for mode in MODES:
                s = stats[mode]
                rows.append({"case": case, "context": context, "mode": mode, "channels": c, "hw": [h, w],
                             "median_ms": round(s.median_ms, 3), "p90_ms": round(s.p90_ms, 3), "runs": s.runs,
                             "cv": round(s.cv, 3), "max_abs_vs_torch": runners[mode][1],
                             "max_abs_vs_slice": runners[mode][2], "ops": ops[mode], "fastest": mode == best})
                print(f"{case:18s} {context:9s} {mode:6s} median {s.median_ms:8.3f} ms  p90 {s.p90_ms:8.3f}  "
                      f"ops {sum(ops[mode].values()):3d} {'<- fastest' if mode == best else ''}", flush=True)
    summary = _summary(rows)
    out = {"machine": machine_info(), "threads": args.threads, "size": [h, w], "rows": rows, "summary": summary}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "shift_ops.json", json.dumps(out, indent=2) + "\n")
    atomic_write_text(args.out / "shift_ops.md", _markdown(out))
    print(f"wrote {args.out / 'shift_ops.json'} and shift_ops.md")
    return 0


def _summary(rows) -> dict:
    """Per mode: geometric mean of (median / best median) over all case x context pairs."""
    ratios: dict[str, list[float]] = {m: [] for m in MODES}
    keys = {(r["case"], r["context"]) for r in rows}
    for k in keys:
        sel = [r for r in rows if (r["case"], r["context"]) == k]
        best = min(r["median_ms"] for r in sel)
        for r in sel:
            ratios[r["mode"]].append(r["median_ms"] / best)
    return {m: round(float(np.exp(np.mean(np.log(v)))), 3) for m, v in ratios.items()}


def _markdown(out) -> str:
    m = out["machine"]
    lines = [f"# Shift-op forms, ONNX Runtime CPU ({out['threads']} thread, {out['size'][0]}x{out['size'][1]})", "",
             f"Machine: {m.get('cpu_model')}, onnxruntime {m.get('onnxruntime_version')}, "
             f"torch {m.get('torch_version')}. Generated by `benchmarks/shift_ops.py`.", "",
             "| case | context | form | median ms | p90 ms | ONNX ops | max abs vs torch |",
             "|---|---|---|---:|---:|---|---:|"]
    for r in out["rows"]:
        ops = ", ".join(f"{k}x{v}" for k, v in sorted(r["ops"].items()))
        mark = " **(fastest)**" if r["fastest"] else ""
        lines.append(f"| {r['case']} | {r['context']} | {r['mode']}{mark} | {r['median_ms']:.3f} | "
                     f"{r['p90_ms']:.3f} | {ops} | {r['max_abs_vs_torch']:.1e} |")
    lines += ["", "Geometric mean of median / fastest median over all cases (1.0 = always fastest):", ""]
    lines += [f"- `{k}`: {v}" for k, v in sorted(out["summary"].items(), key=lambda kv: kv[1])]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
