"""Mobile formats on this CPU: conversion, parity, INT8 quality and latency, side by side with ORT.

For each model (the four ETDS-repo checkpoints of issue 18 and SAFMN with random weights):

* **parity**: LiteRT fp32 and ncnn fp32 vs PyTorch, max |diff| over the five Set5 x4 LR images.
  LiteRT files are fixed-size, so one .tflite is converted per LR size; ncnn runs any size.
* **INT8**: Set5 x4 Y-PSNR (BasicSR protocol, edgesr.metrics.psnr_y) of LiteRT full-integer INT8
  and ncnn INT8 (every convolution, no float fallback) against the same format's fp32; both
  calibrated on edgesr's calibration source (never Set5).
* **latency**: one LR workload (default 128x128 -> 512x512), all runtimes timed in ONE
  interleaved run (edgesr.bench.time_interleaved; ORT with intra-op spinning off), 1 thread each
  unless --threads; ratios are time / ORT fp32 time from the same run (< 1: faster; paired per-round
  ratios give the p10-p90 spread).
* **Core ML**: converted (fp16) and checked statically; no runtime here.

Prints a table; writes benchmarks/results/mobile.json; `--readme` rewrites the README block
between <!-- mobile-coverage:start --> and <!-- mobile-coverage:end --> from that JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mobile.json"
SHARED = ROOT.parent / "shared"
MODELS = {  # name -> checkpoint under shared/checkpoints/etds-repo (None: random weights of a variant)
    "ETDS-T (ETDS_M5C16_x4)": "ETDS/ETDS_M5C16_x4.pth",
    "ETDS-M (ETDS_M6C32_x4)": "ETDS/ETDS_M6C32_x4.pth",
    "ECBSR_M4C16_x4": "ECBSR/ECBSR_M4C16_x4.pth",
    "ABPN_M4C28_x4": "ABPN/ABPN_M4C28_x4.pth",
    "SAFMN x4 (random weights)": None,
}
START, END = "<!-- mobile-coverage:start -->", "<!-- mobile-coverage:end -->"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(name: str):
    import torch

    from edgesr.registry import build_variant, load_model
    from edgesr.reparam import reparameterize

    rel = MODELS[name]
    if rel is None:
        torch.manual_seed(0)
        lm = build_variant("safmn-x4", "deploy")
    else:
        lm = load_model(SHARED / "checkpoints" / "etds-repo" / rel)
    m = lm.module.eval()
    return (reparameterize(m) if lm.spec.form == "training" else m), lm.spec


def set5() -> list[tuple[str, np.ndarray, np.ndarray]]:
    from edgesr.quant.calibration import testset_eval_set

    return [(p.name, p.lr, p.hr) for p in testset_eval_set(SHARED / "testsets" / "Set5", 4).pairs]


def _x(lr_u8: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((lr_u8.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])


def _psnr(y: np.ndarray, hr: np.ndarray) -> float:
    from edgesr.metrics import psnr_y

    return psnr_y(np.clip(y[0].transpose(1, 2, 0), 0, 1), hr, 4)


def quality(name: str, module, spec, pairs) -> dict:
    """Per format: max |fp32 - torch| over Set5, mean Y-PSNR of torch / fp32 / int8."""
    import torch

    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.export.litert import convert_fp32_bytes, quantize_int8_bytes
    from edgesr.export.mobile import calibration_inputs
    from edgesr.export.ncnn import calibrate, convert_bytes, quantize_int8

    out: dict = {"torch": [], "litert_fp32": [], "litert_int8": [], "ncnn_fp32": [], "ncnn_int8": [],
                 "max_abs": {"litert_fp32": 0.0, "ncnn_fp32": 0.0}, "errors": {}}
    try:
        param, weights = convert_bytes(module, spec)
        nc32 = NcnnRunner(param, weights)
        amax = calibrate(param, weights, calibration_inputs(spec, None))
        nc8 = NcnnRunner(*quantize_int8(param, weights, amax)[:2])
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        out["errors"]["ncnn"] = f"{type(e).__name__}: {e}"[:300]
        nc32 = nc8 = None
    for img, lr, hr in pairs:
        x = _x(lr)
        with torch.inference_mode():
            ref = module(torch.from_numpy(x)).numpy()
        out["torch"].append(_psnr(ref, hr))
        if "litert" not in out["errors"]:
            try:
                fp32 = convert_fp32_bytes(module, spec, x.shape[2:])
                y = LiteRtRunner(fp32).run(x)
                out["max_abs"]["litert_fp32"] = max(out["max_abs"]["litert_fp32"], float(np.abs(y - ref).max()))
                out["litert_fp32"].append(_psnr(y, hr))
                q = quantize_int8_bytes(fp32, calibration_inputs(spec, x.shape[2:]))
                out["litert_int8"].append(_psnr(LiteRtRunner(q).run(x), hr))
            except Exception as e:  # noqa: BLE001
                out["errors"]["litert"] = f"{type(e).__name__}: {e}"[:300]
        if nc32 is not None:
            y = nc32.run(x)
            out["max_abs"]["ncnn_fp32"] = max(out["max_abs"]["ncnn_fp32"], float(np.abs(y - ref).max()))
            out["ncnn_fp32"].append(_psnr(y, hr))
            out["ncnn_int8"].append(_psnr(nc8.run(x), hr))
        log(f"  {name} {img}: done")
    mean = {k: (round(float(np.mean(v)), 4) if v else None) for k, v in out.items() if isinstance(v, list)}
    drop = {f: (round(mean[f"{f}_fp32"] - mean[f"{f}_int8"], 4) if mean[f"{f}_int8"] is not None else None)
            for f in ("litert", "ncnn")}
    return {"set5_psnr_y": mean, "int8_drop_db": drop, "fp32_max_abs_vs_torch": out["max_abs"],
            "errors": out["errors"]}


def latency(module, spec, hw: tuple[int, int], threads: int, policy) -> dict:
    import torch

    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.bench import SessionRunner, ort_session, ratio_summary, time_interleaved
    from edgesr.export.litert import convert_fp32_bytes, quantize_int8_bytes
    from edgesr.export.mobile import calibration_inputs
    from edgesr.export.ncnn import calibrate, convert_bytes, quantize_int8
    from edgesr.export.onnx import export_onnx

    x = np.random.default_rng(0).random((1, spec.in_channels, *hw), dtype=np.float32)
    xt = torch.from_numpy(x)
    torch.set_num_threads(threads)
    runners: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "m.onnx"
        export_onnx(module, spec, onnx_path)
        runners["ort:fp32"] = SessionRunner(ort_session(onnx_path, threads=threads, spinning=False), "ort:fp32")
    errors = {}
    try:
        fp32 = convert_fp32_bytes(module, spec, hw)
        runners["litert:fp32"] = LiteRtRunner(fp32, threads=threads)
        runners["litert:int8"] = LiteRtRunner(quantize_int8_bytes(fp32, calibration_inputs(spec, hw)), threads=threads)
    except Exception as e:  # noqa: BLE001
        errors["litert"] = f"{type(e).__name__}: {e}"[:300]
    try:
        param, weights = convert_bytes(module, spec)
        runners["ncnn:fp32"] = NcnnRunner(param, weights, threads=threads)
        amax = calibrate(param, weights, calibration_inputs(spec, None))
        runners["ncnn:int8"] = NcnnRunner(*quantize_int8(param, weights, amax)[:2], threads=threads)
    except Exception as e:  # noqa: BLE001
        errors["ncnn"] = f"{type(e).__name__}: {e}"[:300]

    def torch_fn():
        with torch.inference_mode():
            module(xt)

    fns = {"torch:fp32": torch_fn} | {k: (lambda r=r: r.run(x)) for k, r in runners.items()}
    load_before = os.getloadavg()
    stats = time_interleaved(fns, policy)
    load_after = os.getloadavg()
    base = stats["ort:fp32"]
    rows = {k: {"median_ms": round(s.median_ms, 3), "p10_ms": round(float(np.percentile(s.samples_ms, 10)), 3),
                "p90_ms": round(s.p90_ms, 3), "runs": s.runs, "vs_ort_fp32": ratio_summary(s, base)}
            for k, s in stats.items()}
    return {"lr_hw": list(hw), "threads": threads, "results": rows, "errors": errors,
            "loadavg_before": load_before, "loadavg_after": load_after}


def coreml_check(module, spec, hw) -> dict:
    try:
        from edgesr.export.coreml import export_coreml

        with tempfile.TemporaryDirectory() as tmp:
            r = export_coreml(module, spec, Path(tmp) / "m.mlpackage.zip", precision="fp16", hw=hw)
        return {"status": r.status, "ops_outside_ane_list": r.static_check["ops_outside_ane_list"],
                "concerns": r.static_check["concerns"], "ane_likely": r.static_check["ane_likely"]}
    except Exception as e:  # noqa: BLE001
        return {"status": f"does not convert: {type(e).__name__}: {e}"[:300]}


def readme_block(data: dict) -> str:
    lat_hw = data["latency_lr_hw"]
    lines = [START, "",
             f"Generated by `python benchmarks/mobile.py --readme` from `benchmarks/results/mobile.json` "
             f"({data['machine'].get('cpu_model')}, {data['threads']} thread(s), one interleaved run per model; "
             f"latency at {lat_hw[0]}x{lat_hw[1]} LR -> x4; (x) = format time / ORT fp32 time, < 1 is faster, "
             f"paired per-round p10-p90). "
             "Parity: max |fp32 - PyTorch| over the Set5 x4 LR images; INT8 drop: Set5 Y-PSNR of fp32 minus "
             "all-INT8 in the same format (no float fallback). Core ML: converted and checked statically, "
             "not run (no runtime on Linux). 1-minute load average during the timed runs: "
             + ", ".join(f"{m['latency']['loadavg_before'][0]:.0f}" for m in data["models"].values())
             + f" on {data['machine'].get('logical_cpus')} CPUs: a shared, loaded machine, so only the same-run "
             "ratios mean anything, and their spread is wide.", "",
             "| model | LiteRT fp32 parity | LiteRT INT8 drop dB | ncnn fp32 parity | ncnn INT8 drop dB | "
             "ORT fp32 ms | LiteRT fp32 ms (x vs ORT) | LiteRT INT8 ms (x) | ncnn fp32 ms (x) | ncnn INT8 ms (x) | "
             "Core ML |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(rows, k):
        r = rows.get(k)
        if not r:
            return "-"
        v = r["vs_ort_fp32"]
        spread = f", {v['paired_p10']:.2f}-{v['paired_p90']:.2f}" if "paired_p10" in v else ""
        return f"{r['median_ms']:.1f} ({v['ratio']:.2f}x{spread})"

    for name, m in data["models"].items():
        q, rows = m["quality"], m["latency"]["results"]
        mx = q["fp32_max_abs_vs_torch"]

        def par(fmt):
            if fmt in q["errors"]:
                return "does not convert"
            return f"{mx[f'{fmt}_fp32']:.1e} ({'ok' if mx[f'{fmt}_fp32'] <= 1e-4 else 'FAIL'})"

        def drop(fmt):
            d = q["int8_drop_db"][fmt]
            return "-" if d is None else f"{d:.3f}"

        cm = m["coreml"]
        cml = ("converted, not run; ANE list: " + ("ok" if cm.get("ane_likely") else
               ", ".join(cm.get("ops_outside_ane_list") or cm.get("concerns") or ["?"]))
               if cm["status"].startswith("converted") else cm["status"][:60])
        lines.append(f"| {name} | {par('litert')} | {drop('litert')} | {par('ncnn')} | {drop('ncnn')} | "
                     f"{rows['ort:fp32']['median_ms']:.1f} | {ms(rows, 'litert:fp32')} | {ms(rows, 'litert:int8')} | "
                     f"{ms(rows, 'ncnn:fp32')} | {ms(rows, 'ncnn:int8')} | {cml} |")
    lines += ["", END]
    return "\n".join(lines)


def write_readme(data: dict) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the {START} ... {END} markers")
    a, b = text.index(START), text.index(END) + len(END)
    readme.write_text(text[:a] + readme_block(data) + text[b:])


def main(argv=None) -> int:
    from edgesr.bench import TimingPolicy, machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    ap.add_argument("--size", type=int, default=128, help="LR side of the latency workload")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per runtime")
    ap.add_argument("--readme", action="store_true", help="only rewrite README's block from the saved JSON")
    args = ap.parse_args(argv)
    if args.readme:
        write_readme(json.loads(RESULTS.read_text()))
        print(f"README.md block rewritten from {RESULTS}")
        return 0
    if not (SHARED / "testsets" / "Set5").is_dir():
        raise SystemExit(f"needs {SHARED} (checkpoints + Set5)")
    names = [n for n in MODELS if n in args.models.split(",")] or list(MODELS)
    pairs = set5()
    policy = TimingPolicy(warmup_seconds=0.5, min_runs=10, min_seconds=args.seconds)
    data = {"machine": machine_info(), "threads": args.threads, "latency_lr_hw": [args.size, args.size],
            "command": "python benchmarks/mobile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "models": {}}
    for name in names:
        t0 = time.time()
        module, spec = load(name)
        log(f"{name}: quality on Set5 ...")
        q = quality(name, module, spec, pairs)
        log(f"{name}: latency ...")
        lat = latency(module, spec, (args.size, args.size), args.threads, policy)
        log(f"{name}: Core ML ...")
        cm = coreml_check(module, spec, (args.size, args.size))
        data["models"][name] = {"quality": q, "latency": lat, "coreml": cm, "seconds": round(time.time() - t0, 1)}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=1, default=str) + "\n")
    block = readme_block(data)
    print(block)
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
