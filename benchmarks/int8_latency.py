"""INT8 (cpu profile) vs fp32 latency in ONNX Runtime, 180x320 input -> x4 (720x1280 output).

For ETDS_M5C16_x4, ETDS_M6C32_x4, ECBSR_M4C16_x4 and ABPN_M4C28_x4 (deploy forms, from
../shared; random weights in the same deploy form when it is absent): export fp32 ONNX,
quantize with the ``cpu`` profile (default calibration, default 0.1 dB budget, so layers
the search keeps float are in the timed graph), then time fp32 and int8 interleaved
round-robin in the same process (edgesr.bench.time_interleaved): median of >= 10 runs,
with min / p90 / CV as the spread. Accuracy (Set5 x4 Y-PSNR, when ../shared is present)
is recorded next to it.

    python benchmarks/int8_latency.py [--threads 1] [--runs 10] [--models A,B] [--study]

``--search-study`` compares the sensitivity rankings ("only": quantize only that layer;
"except": quantize everything but that layer) with the exhaustive greedy search, on
settings where the budget needs float layers (naive trt: no equalization/centring/GPTQ;
and the cpu profile); it is merged into the JSON under "search_study" (``--no-latency``
skips the timing part).

``--study`` adds the profile study behind the ``cpu`` choice (docs/int8.md): every
activation/weight type choice and reduce_range, all layers int8 (no search), accuracy
and latency, plus the PReLU study for ECBSR (PRelu kept in float between
DequantizeLinear/QuantizeLinear vs the exact PRelu -> Relu rewrite).

Prints a table; writes benchmarks/results/int8_latency.json with edgesr.bench.machine_info().
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("EDGESR_SHARED", REPO.parent / "shared"))
CKPTS = SHARED / "checkpoints" / "etds-repo"
SET5 = SHARED / "testsets" / "Set5"
RESULTS = REPO / "benchmarks" / "results" / "int8_latency.json"
MODELS = {"ETDS_M5C16_x4": ("ETDS", "etds-t-x4"), "ETDS_M6C32_x4": ("ETDS", "etds-m-x4"),
          "ECBSR_M4C16_x4": ("ECBSR", "ecbsr-m4c16-x4"), "ABPN_M4C28_x4": ("ABPN", "abpn-m4c28-x4")}
SHAPE = (1, 3, 180, 320)


def load_deploy(name: str):
    import torch

    from edgesr.registry import build_variant, load_model
    from edgesr.reparam import reparameterize

    family, variant = MODELS[name]
    ckpt = CKPTS / family / f"{name}.pth"
    if ckpt.is_file():
        lm = load_model(ckpt)
        return reparameterize(lm.module), lm.spec, ckpt.name
    torch.manual_seed(0)
    lm = build_variant(variant, "training")
    return reparameterize(lm.module), lm.spec, f"random weights ({variant})"


def session(path, threads: int):
    from edgesr.backends.ort_session import ort_session

    return ort_session(path, threads=threads, graph_opt="all")


def time_sessions(sessions: dict, runs: int, x: np.ndarray) -> dict:
    from edgesr.bench import TimingPolicy, time_interleaved

    fns = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()}
    stats = time_interleaved(fns, TimingPolicy(warmup_seconds=1.0, min_runs=runs, min_seconds=2.0))
    return {k: v.to_dict() for k, v in stats.items()}


def optimized_ops(path, threads: int, tmp: Path) -> list[str]:
    import onnx

    from edgesr.backends.ort_session import ort_session

    ort_session(path, threads=threads, graph_opt="all", optimized_model_path=tmp / "optimized.onnx")
    return sorted({n.op_type for n in onnx.load(str(tmp / "optimized.onnx")).graph.node})


def quantize(fp32, out, spec, profile, set5, threads, **cfg):
    from edgesr.quant import QuantConfig, quantize_model

    t0 = time.perf_counter()
    res = quantize_model(fp32, out, spec, QuantConfig(profile=profile, threads=threads, progress=False, **cfg),
                         test_set=set5)
    return res, time.perf_counter() - t0


def acc(res) -> dict:
    return {"heldout_fp32": res.psnr_fp32, "heldout_int8": res.psnr_int8, "heldout_drop": res.drop,
            "set5_fp32": res.test_psnr_fp32, "set5_int8": res.test_psnr_int8, "set5_drop": res.test_drop,
            "float_layers": res.float_layers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1: shared machine)")
    ap.add_argument("--runs", type=int, default=10, help="minimum timed runs per model (median reported)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    ap.add_argument("--study", action="store_true", help="also the profile study and the PReLU study")
    ap.add_argument("--search-study", action="store_true", help="compare sensitivity rankings with greedy")
    ap.add_argument("--ablation", action="store_true", help="trt profile: what each technique adds (Set5)")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency table (keep the JSON's)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.no_latency:
        prev = {}
        if Path(args.out).is_file():
            import json

            prev = json.loads(Path(args.out).read_text())
        from edgesr.fsutil import atomic_write_json

        if args.ablation:
            prev["ablation"] = ablation(args)
        if args.search_study:
            prev["search_study"] = search_study(args)
        if args.ablation or args.search_study:
            atomic_write_json(args.out, prev)
            print(f"\nwrote {args.out}")
        return 0

    from edgesr.bench import machine_info
    from edgesr.export.onnx import export_onnx
    from edgesr.fsutil import atomic_write_json
    from edgesr.quant import testset_eval_set

    set5 = testset_eval_set(SET5, 4) if SET5.is_dir() else None
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    result = {"benchmark": "int8_latency", "input_shape": list(SHAPE), "scale": 4, "threads": args.threads,
              "timing": "interleaved round-robin, median of >= %d runs (edgesr.bench.time_interleaved)" % args.runs,
              "machine": machine_info(), "models": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesr-int8-bench-") as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            module, spec, source = load_deploy(name)
            fp32 = export_onnx(module, spec, tmp / f"{name}.onnx").path
            res, qsec = quantize(fp32, tmp / f"{name}_cpu.onnx", spec, "cpu", set5, args.threads)
            t = time_sessions({"fp32": session(fp32, args.threads), "int8_cpu": session(res.path, args.threads)},
                              args.runs, x)
            entry = {"source": source, "cpu_profile": acc(res), "quantize_seconds": qsec,
                     "int8_optimized_ops": optimized_ops(res.path, args.threads, tmp), "latency_ms": t,
                     "speedup_median": t["fp32"]["median_ms"] / t["int8_cpu"]["median_ms"]}
            rows.append([name, t["fp32"]["median_ms"], t["int8_cpu"]["median_ms"], entry["speedup_median"],
                         f"{t['fp32']['min_ms']:.1f}/{t['fp32']['p90_ms']:.1f}",
                         f"{t['int8_cpu']['min_ms']:.1f}/{t['int8_cpu']['p90_ms']:.1f}",
                         res.test_drop, len(res.float_layers)])
            if args.study:
                entry["profile_study"] = study(name, fp32, spec, set5, tmp, x, args)
            result["models"][name] = entry
            print(f"[{name}] done ({qsec:.0f} s quantization)", file=sys.stderr, flush=True)
    from edgesr.cli.output import format_table

    print(format_table(["model", "fp32 ms (median)", "int8 cpu ms", "speedup", "fp32 min/p90", "int8 min/p90",
                        "Set5 drop dB", "float layers"], rows))
    if args.study:
        for name, e in result["models"].items():
            print(f"\n{name}: profile study (all layers int8 except where noted)")
            print(format_table(["variant", "median ms", "min/p90 ms", "Set5 drop", "held-out drop"],
                               [[k, v["latency_ms"]["median_ms"],
                                 f"{v['latency_ms']['min_ms']:.1f}/{v['latency_ms']['p90_ms']:.1f}",
                                 v.get("set5_drop"), v.get("heldout_drop")]
                                for k, v in e["profile_study"].items()]))
    if args.ablation:
        result["ablation"] = ablation(args)
    if args.search_study:
        result["search_study"] = search_study(args)
    if Path(args.out).is_file():  # keep sections measured by an earlier run (--no-latency --ablation ...)
        import json

        prev = json.loads(Path(args.out).read_text())
        for key in ("ablation", "search_study"):
            if key not in result and key in prev:
                result[key] = prev[key]
    atomic_write_json(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


def ablation(args) -> dict:
    """Symmetric int8 (TensorRT-style), all layers int8, one technique added at a time."""
    from edgesr.cli.output import format_table
    from edgesr.export.onnx import export_onnx
    from edgesr.quant import TRT, testset_eval_set

    set5 = testset_eval_set(SET5, 4) if SET5.is_dir() else None
    off = dict(equalize=False, center=False, gptq=False, bias_correction=False, psnr_budget=None)
    ort_default = replace(TRT, name="ort-default", placement="ort")
    steps = [
        ("ORT default placement (QDQ on every tensor), min-max", ort_default, off),
        ("+ QDQ only on Conv/Add inputs", TRT, off),
        ("+ activation-range equalization", TRT, dict(off, equalize=True)),
        ("+ bias correction", TRT, dict(off, equalize=True, bias_correction=True)),
        ("+ GPTQ rounding", TRT, dict(off, equalize=True, bias_correction=True, gptq=True)),
        ("+ zero-centring (= trt profile)", TRT, dict(off, equalize=True, bias_correction=True, gptq=True,
                                                      center=True)),
    ]
    out: dict = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesr-int8-abl-") as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            module, spec, _ = load_deploy(name)
            fp32 = export_onnx(module, spec, tmp / f"{name}.onnx").path
            out[name] = {}
            for label, prof, cfg in steps:
                res, _ = quantize(fp32, tmp / f"{name}_abl.onnx", spec, prof, set5, args.threads, **cfg)
                out[name][label] = {"set5_fp32": res.test_psnr_fp32, "set5_int8": res.test_psnr_int8,
                                    "set5_drop": res.test_drop, "heldout_drop": res.drop}
                rows.append([name, label, res.test_psnr_int8, res.test_drop, res.drop])
            print(f"[ablation] {name} done", file=sys.stderr, flush=True)
    print(format_table(["model", "step", "Set5 int8", "Set5 drop", "held-out drop"], rows))
    return out


def search_study(args) -> dict:
    """Which sensitivity measure predicts the greedy mixed-precision result?"""
    from edgesr.cli.output import format_table
    from edgesr.export.onnx import export_onnx
    from edgesr.quant import QuantConfig, QuantSession, testset_eval_set
    from edgesr.quant.evaluate import evaluate
    from edgesr.quant.sensitivity import greedy_search, ranking, search, sensitivity

    set5 = testset_eval_set(SET5, 4) if SET5.is_dir() else None
    naive = dict(equalize=False, center=False, gptq=False, bias_correction=False)
    settings = [(name, "trt (naive)", dict(profile="trt", **naive)) for name in args.models.split(",")]
    settings += [(name, "cpu", dict(profile="cpu")) for name in args.models.split(",")]
    out = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesr-int8-search-") as tmp:
        tmp = Path(tmp)
        fp32 = {}
        for name, label, cfg in settings:
            if name not in fp32:
                module, spec, _ = load_deploy(name)
                fp32[name] = (export_onnx(module, spec, tmp / f"{name}.onnx").path, spec)
            path, spec = fp32[name]
            budget = 0.1
            config = QuantConfig(threads=args.threads, progress=False, psnr_budget=budget, **cfg)
            with QuantSession(path, spec, config) as qs:
                f, a = qs.psnr_fp32, qs.psnr_int8_all
                if f - a <= budget:
                    out[f"{name} / {label}"] = {"all_int8_drop": f - a, "needs_search": False}
                    continue
                n0 = qs.evaluations
                sens = sensitivity(qs.layers, qs.score, f, a, ("only", "except"))
                n_sens = qs.evaluations - n0
                entry = {"all_int8_drop": f - a, "needs_search": True, "sensitivity_evaluations": n_sens,
                         "sensitivity": [r.to_dict() for r in sens], "methods": {}}
                results = {m: search(ranking(sens, m), qs.score, f, a, budget) for m in ("only", "except")}
                results["greedy"] = greedy_search([l.name for l in qs.layers], qs.score, f, a, budget)
                for m, r in results.items():
                    s5 = None
                    if set5 is not None:
                        p = qs.build(tmp / f"{name}_{m}.onnx", r.float_layers)
                        s5 = evaluate(qs.fp32_path, spec, set5, args.threads).psnr - evaluate(p, spec, set5,
                                                                                            args.threads).psnr
                    entry["methods"][m] = {"float_layers": r.float_layers, "heldout_drop": r.drop,
                                           "within_budget": r.within_budget, "search_evaluations": r.evaluations,
                                           "set5_drop": s5}
                    rows.append([name, label, m, len(r.float_layers), r.drop, s5,
                                 r.evaluations + (n_sens if m != "greedy" else 0),
                                 ", ".join(x.strip("/").replace("/Conv", "") for x in r.float_layers)])
                out[f"{name} / {label}"] = entry
            print(f"[search study] {name} / {label} done", file=sys.stderr, flush=True)
    print(format_table(["model", "setting", "method", "#float", "held-out drop", "Set5 drop", "evaluations",
                        "float layers"], rows))
    return out


def study(name, fp32, spec, set5, tmp: Path, x, args) -> dict:
    """Every activation/weight choice, all layers int8 (no mixed precision), + PReLU variants."""
    from edgesr.quant import CPU, TRT

    variants = {
        "u8 act / s8 w (8-bit)": dict(profile=replace(CPU, reduce_range=False)),
        "u8 act / s8 w, reduce_range (cpu)": dict(profile=CPU),
        "u8 act / u8 w": dict(profile=replace(CPU, weight_type="uint8", weight_symmetric=False, reduce_range=False)),
        "s8 act / s8 w (asymmetric act)": dict(profile=replace(CPU, activation_type="int8", reduce_range=False)),
        "s8 act / s8 w, reduce_range": dict(profile=replace(CPU, activation_type="int8")),
        "trt profile graph on CPU": dict(profile=TRT),
    }
    if name.startswith("ECBSR"):
        variants["cpu + PRelu kept (one float PRelu)"] = dict(profile=CPU, prelu="keep")
        variants["cpu + PRelu decomposed (float Relu/Sub/Mul/Add)"] = dict(profile=CPU, prelu="decompose")
        variants["cpu + PRelu split (Relu, 2x channels, int8)"] = dict(profile=CPU, prelu="split")
    sessions = {"fp32": session(fp32, args.threads)}
    out = {}
    for label, cfg in variants.items():
        path = tmp / f"{name}_study_{len(out)}.onnx"
        prof = cfg.pop("profile")
        res, _ = quantize(fp32, path, spec, prof, set5, args.threads, psnr_budget=None, **cfg)
        out[label] = {"set5_drop": res.test_drop, "heldout_drop": res.drop,
                      "optimized_ops": optimized_ops(path, args.threads, tmp)}
        sessions[label] = session(path, args.threads)
    if name.startswith("ECBSR"):  # the rewrites in fp32: decomposition (bit-exact) and doubled channels
        import onnx

        from edgesr.quant.prelu import decompose_prelu, split_prelu

        for label, fn in (("fp32 with PRelu decomposed", decompose_prelu), ("fp32 with PRelu split", split_prelu)):
            m, rep = fn(onnx.load(str(fp32)), x[:, :, :32, :32])
            p = tmp / f"{name}_fp32_{fn.__name__}.onnx"
            onnx.save(m, str(p))
            out[label] = {"max_abs_change": rep.max_abs_change}
            sessions[label] = session(p, args.threads)
    t = time_sessions(sessions, args.runs, x)
    out["fp32"] = {}
    for k in out:
        out[k]["latency_ms"] = t[k]
    return out


if __name__ == "__main__":
    sys.exit(main())
