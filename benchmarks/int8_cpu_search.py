"""What the `cpu` profile's mixed-precision search reaches, per model: held-out and Set5 x4 drop,
layers kept float, and speed against ORT fp32 timed side by side in one interleaved run.

    python benchmarks/int8_cpu_search.py [--models ETDS-M,ETDS-L,RLFN,SPAN-ch28] [--runs 10]

Models: the x4 checkpoints of benchmarks/int8_runtimes.py (../shared). Each is exported, quantized
with ``QuantConfig(profile="cpu")`` (default budget 0.1 dB on the held-out tiles; Set5 never takes
part in a choice) and timed at 180x320 -> x4, one intra-op thread, ORT spinning off, fp32 and INT8
interleaved (edgesr.bench.time_interleaved); the machine, its u8 x s8 path and the load average
before/after each model are recorded. Writes benchmarks/results/int8_cpu_search.json and prints a
table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from int8_runtimes import LR_HW, MODELS, SET5, SHARED, export_deploy_fp32  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "int8_cpu_search.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_model(name: str, args, tmp: Path, set5) -> dict:
    from edgesr.bench import SessionRunner, TimingPolicy, ort_session, ratio_summary, time_interleaved
    from edgesr.quant import QuantConfig, quantize_model

    d = tmp / name
    spec, fp32 = export_deploy_fp32(MODELS[name], d)
    entry: dict = {"checkpoint": MODELS[name], "load_before": os.getloadavg()}
    t0 = time.perf_counter()
    res = quantize_model(fp32, d / "int8_cpu.onnx", spec,
                         QuantConfig(profile="cpu", threads=args.threads, progress=False), test_set=set5)
    entry |= {"quantize_seconds": round(time.perf_counter() - t0, 1), "heldout_drop": res.drop,
              "all_int8_heldout_drop": res.psnr_fp32 - res.psnr_int8_all, "within_budget": res.within_budget,
              "set5_drop": res.test_drop, "float_layers": res.float_layers, "layers": len(res.layers),
              "search_steps": res.search_steps}
    x = np.random.default_rng(0).random((1, spec.in_channels, *LR_HW), dtype=np.float32)
    runners = {k: SessionRunner(ort_session(p, threads=args.threads, spinning=False), str(p))
               for k, p in (("ort fp32", fp32), ("edgesr cpu int8", res.path))}
    st = time_interleaved({k: (lambda r=r: r.run(x)) for k, r in runners.items()},
                          TimingPolicy(warmup_seconds=1.0, min_runs=args.runs, min_seconds=args.min_seconds))
    entry["latency_ms"] = {k: v.to_dict() for k, v in st.items()}
    entry["speedup"] = ratio_summary(st["ort fp32"], st["edgesr cpu int8"])
    entry["load_after"] = os.getloadavg()
    log(f"  {name}: held-out {res.drop:.3f} (all-int8 {entry['all_int8_heldout_drop']:.3f}), Set5 {res.test_drop:.3f}, "
        f"{len(res.float_layers)}/{len(res.layers)} float, {entry['speedup']['ratio']:.2f}x fp32 "
        f"({entry['quantize_seconds']:.0f} s)")
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="ETDS-M,ETDS-L,RLFN,SPAN-ch28")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if not SET5.is_dir():
        print(f"needs Set5 and the checkpoints under {SHARED}", file=sys.stderr)
        return 2
    from edgesr.bench import machine_info
    from edgesr.cli.output import format_table
    from edgesr.fsutil import atomic_write_json
    from edgesr.machine import int8_dot_product
    from edgesr.quant import testset_eval_set

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    set5 = testset_eval_set(SET5, 4)
    out = {"benchmark": "int8_cpu_search", "lr_size": list(LR_HW), "threads": args.threads,
           "machine": machine_info(), "int8_dot_product": int8_dot_product(), "models": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesr-int8-cpu-") as tmp:
        for i, name in enumerate(names):
            log(f"[{i + 1}/{len(names)}] {name} (load {os.getloadavg()[0]:.1f})")
            e = out["models"][name] = run_model(name, args, Path(tmp), set5)
            atomic_write_json(args.out, out)  # after every model: a stopped run keeps what it measured
            s = e["speedup"]
            rows.append([name, f"{e['all_int8_heldout_drop']:.3f}", f"{e['heldout_drop']:.3f}"
                         + ("" if e["within_budget"] else " OVER"), f"{e['set5_drop']:.3f}",
                         f"{len(e['float_layers'])}/{e['layers']}",
                         f"{e['latency_ms']['ort fp32']['median_ms']:.1f}",
                         f"{s['ratio']:.2f}x ({s.get('paired_p10', 0):.2f}-{s.get('paired_p90', 0):.2f})",
                         f"{e['load_before'][0]:.1f}/{e['load_after'][0]:.1f}"])
    print(format_table(["model", "all-int8 held-out", "held-out drop", "Set5 drop", "float", "ORT fp32 ms",
                        "INT8 x fp32 (p10-p90)", "load"], rows))
    print(f"CPU: {out['int8_dot_product']['cpu_model']}, u8 x s8 through {out['int8_dot_product']['u8s8_path']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
