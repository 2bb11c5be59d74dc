"""Which LiteRT quantization scheme keeps an attention model's picture, and what each costs on this CPU.

For one model of benchmarks/mobile.py (default SAFMN++, NTIRE 2024 team 23, real weights), the
module prepared as `edgesr convert --tflite --int8` prepares it (edgesr.export.litert.LiteRtInt8:
equalization, GPTQ weights on the int8 grid, bias correction), then quantized with:

* a8w8: full integer, int8 activations (ai-edge-quantizer static_wi8_ai8, edgesr's ranges);
* a16w8: full integer, int16 activations (static_wi8_ai16, LiteRT's 16x8 mode): the scheme the
  verdict falls back to;
* a16w8, convolutions float: the same with every convolution left float (mixed float / int16);
* dynamic int8: int8 weights, activations quantized at run time per op (dynamic_wi8_afp32; a
  float file to the app), every convolution quantized, and with the convolutions the verdict's
  float-layer search keeps float (the file `edgesr convert --tflite --int8` writes when a8w8
  misses the budget: scheme "dynamic");
* weight-only int8: int8 weights dequantized to float (weight_only_wi8_afp32).

Quality: the held-out drop (Y-PSNR of the unprepared fp32 file minus the scheme's, the verdict's
tiled sample photos). Latency: all files at one LR size in ONE interleaved run with the fp32 file
(edgesr.timing.time_interleaved), 1 thread; ratio = scheme time / fp32 time, paired per round.

Prints a table; writes benchmarks/results/litert_schemes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "litert_schemes.json"
sys.path.insert(0, str(ROOT / "benchmarks"))


def builders(recipe_obj, hw, dynamic_float_ops=()):
    """scheme -> (description, function building the .tflite bytes at hw)."""
    from ai_edge_quantizer import quantizer, recipe

    from edgesr.export.litert import conv_ops

    fp32 = recipe_obj.fp32(hw)

    def aeq(rec):
        def build():
            qt = quantizer.Quantizer(bytearray(fp32))
            qt.load_quantization_recipe(rec)
            return bytes(qt.quantize().quantized_model)
        return build

    return {
        "a8w8": ("integer: int8 weights, int8 activations", lambda: recipe_obj.build(hw)),
        "a16w8": ("integer: int8 weights, int16 activations (LiteRT 16x8)", lambda: recipe_obj.build(hw, (), 16)),
        "a16w8, convolutions float": ("int16 activations, every convolution float",
                                      lambda: recipe_obj.build(hw, conv_ops(fp32), 16)),
        "dynamic int8": ("int8 weights, activations quantized at run time (float file)",
                         aeq(recipe.dynamic_wi8_afp32())),
        "dynamic int8, verdict's float convs": (f"the same, {len(dynamic_float_ops)} convolutions float (the verdict's "
                                                "search)", lambda: recipe_obj.build(hw, dynamic_float_ops,
                                                                                   scheme="dynamic")),
        "weight-only int8": ("int8 weights dequantized to float", aeq(recipe.weight_only_wi8_afp32())),
    }


def main(argv=None) -> int:
    import mobile

    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.export.litert import LiteRtInt8, convert_fp32_bytes
    from edgesr.machine import machine_info
    from edgesr.metrics import psnr_y
    from edgesr.quant.calibration import from_model_output, held_out_eval_set, to_model_input
    from edgesr.timing import TimingPolicy, ratio_summary, time_interleaved

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="SAFMN++ (NTIRE 2024 team23)", help="a name of benchmarks/mobile.py")
    ap.add_argument("--size", type=int, default=128, help="LR side of the latency workload")
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds (each runs every file once)")
    args = ap.parse_args(argv)
    t0 = time.time()
    module, spec = mobile.load(args.model)
    recipe_obj = LiteRtInt8(module, spec)
    pairs = held_out_eval_set(spec.scale).pairs
    sizes = {p.lr.shape[:2] for p in pairs}
    if len(sizes) != 1:
        raise SystemExit(f"the held-out tiles have several sizes {sizes}; this script converts once")
    eval_hw = next(iter(sizes))

    def psnr(model: bytes) -> float:
        r = LiteRtRunner(model, name="litert:eval")
        return float(np.mean([psnr_y(np.clip(from_model_output(r.run(to_model_input(p.lr, spec)[None])[0], spec),
                                             0, 1), p.hr, spec.scale) for p in pairs]))

    base = psnr(convert_fp32_bytes(module, spec, eval_hw))
    dyn_float, _ = recipe_obj.verdict(0.1, schemes=("dynamic",))
    rows: dict = {}
    for name, (what, build) in builders(recipe_obj, eval_hw, dyn_float).items():
        rows[name] = {"what": what, "held_out_drop_db": round(base - psnr(build()), 4)}
        print(f"  {name}: held-out drop {rows[name]['held_out_drop_db']:.3f} dB", file=sys.stderr, flush=True)
    hw = (args.size, args.size)
    x = np.random.default_rng(0).random((1, spec.in_channels, *hw), dtype=np.float32)
    runners = {"fp32": LiteRtRunner(convert_fp32_bytes(module, spec, hw), threads=1)}
    runners |= {name: LiteRtRunner(build(), threads=1)
                for name, (_, build) in builders(recipe_obj, hw, dyn_float).items()}
    load_before = os.getloadavg()
    stats = time_interleaved({k: (lambda r=r: r.run(x)) for k, r in runners.items()},
                             TimingPolicy(warmup_seconds=0.5, min_runs=args.runs, max_runs=args.runs, min_seconds=0))
    load_after = os.getloadavg()
    for name, s in stats.items():
        rows.setdefault(name, {"what": "the unprepared fp32 file (reference)", "held_out_drop_db": 0.0})
        rows[name] |= {"median_ms": round(s.median_ms, 2), "min_ms": round(min(s.samples_ms), 2),
                       "max_ms": round(max(s.samples_ms), 2), "runs": s.runs,
                       "vs_fp32": ratio_summary(s, stats["fp32"])}
    data = {"model": args.model, "eval_set": f"sample-held-out, {len(pairs)} tiles of {eval_hw[0]}x{eval_hw[1]} LR",
            "psnr_fp32": round(base, 4), "latency_lr_hw": list(hw), "threads": 1,
            "loadavg_before": load_before, "loadavg_after": load_after, "machine": machine_info(),
            "command": "python benchmarks/litert_schemes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seconds": round(time.time() - t0, 1), "schemes": {"fp32": rows.pop("fp32")} | rows}
    print(f"{args.model}: held-out = {data['eval_set']}; latency {hw[0]}x{hw[1]} LR, 1 thread, "
          f"load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print("| scheme | what | held-out drop dB | median ms (min-max) | x fp32 (paired p10-p90) |\n|---|---|---|---|---|")
    for name, r in data["schemes"].items():
        v = r["vs_fp32"]
        spread = f", {v['paired_p10']:.2f}-{v['paired_p90']:.2f}" if "paired_p10" in v else ""
        print(f"| {name} | {r['what']} | {r['held_out_drop_db']:.3f} | {r['median_ms']:.1f} ({r['min_ms']:.1f}-"
              f"{r['max_ms']:.1f}) | {v['ratio']:.2f}{spread} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
