"""Generic reparameterization vs the hand-written one at real widths: every registry training form.

    python benchmarks/genrep_registry.py [--threads 1]

For each registry family that has a training form, its released-size variant (ECBSR-M4C16,
RepSR-M4C16, SPAN-48, FMEN, SESR-M5, RepRFN; all x4 except SESR x2) with random weights
(randomized BN statistics, half-gain kernels so activations stay O(1-10)), plus two real
checkpoints: the bundled training-form ECBSR-M4C16 x4 and (when ../shared is present) the
training-form ETDS-M x4. `collapse_linear` runs on the training form with author hooks off;
its output is compared with `reparameterize()`'s on random inputs in [0, 1] at odd sizes (1x1,
non-square, borders) in fp32 (clamped to [0, 1] where the deploy form clamps, as ETDS's does).
Prints a table (regions, params and MACs per output pixel before -> after, fp32 max abs vs hand-written, seconds) and writes
benchmarks/results/genrep_registry.json with the machine and load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("EDGESR_SHARED", ROOT.parent / "shared"))
VARIANTS = ["ecbsr-m4c16-x4", "repsr-m4c16-x4", "span-ch48-x4", "fmen-x4", "sesr-m5-x2", "reprfn-x4"]
SIZES = [(1, 1), (17, 23), (2, 5), (31, 16)]


def randomize(model, seed: int):
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
                continue
            for _, p in m.named_parameters(recurse=False):
                if isinstance(m, nn.PReLU):
                    p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.05)
                elif p.dim() == 4:
                    p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5 * 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def run_one(name: str, module, cin: int, min_size: int) -> dict:
    import torch

    from edgesr.costmodel import count_params
    from edgesr.reparam import reparameterize
    from edgesr.reparam.generic import collapse_linear

    g = torch.Generator().manual_seed(0)
    ex = max(24, min_size)
    example = torch.rand(1, cin, ex, ex + 3, generator=g)
    t0 = time.perf_counter()
    res = collapse_linear(module, example, deploy_hooks=False)
    seconds = time.perf_counter() - t0
    hand = reparameterize(module)
    worst = ref = 0.0
    ran = []
    for hw in SIZES:
        hw = (max(hw[0], min_size), max(hw[1], min_size))
        x = torch.rand(2, cin, *hw, generator=g)
        with torch.no_grad():
            a, b = res.module(x), hand(x)
        if getattr(hand, "clamps_output", False):  # ETDS's deploy form ends in a ReLU clip to [0, 1]
            a = a.clamp(0, 1)
        worst, ref = max(worst, float((a - b).abs().max())), max(ref, float(b.abs().max()))
        ran.append(list(hw))
    rep = res.report
    return {"model": name, "seconds": round(seconds, 1), "collapsed": len(res.collapsed), "left": len(res.left),
            "splits": len(rep["splits"]), "params_before": rep["params_before"], "params_after": rep["params_after"],
            "params_hand": count_params(hand), "macs_px_before": rep["macs_per_output_pixel_before"],
            "macs_px_after": rep["macs_per_output_pixel_after"], "max_abs_vs_hand_fp32": worst, "ref_max": ref,
            "sizes": ran, "whole_fp64_rel": rep["verification"]["max_rel_fp64"],
            "whole_fp32_abs": rep["verification"]["max_abs_fp32"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "genrep_registry.json")
    args = ap.parse_args()
    import torch

    from edgesr import registry
    from edgesr.bench import machine_info
    from edgesr.checkpoint import load_state_dict
    from edgesr.fsutil import atomic_write_json
    from edgesr.pipeline import BUNDLED_CHECKPOINT

    torch.set_num_threads(args.threads)
    jobs = []
    for i, v in enumerate(VARIANTS):
        lm = registry.build_variant(v, "training")
        jobs.append((f"{v} (random)", lambda lm=lm, i=i: randomize(lm.module, i), lm.spec))
    bundled = registry.load_model(load_state_dict(BUNDLED_CHECKPOINT))
    jobs.append(("ecbsr-m4c16-x4 bundled (trained)", lambda: bundled.module, bundled.spec))
    etds = SHARED / "checkpoints" / "etds-repo" / "ETDS" / "ablations" / "ETDS_M6C32_x4_normal_loss.pth"
    if etds.is_file():
        lm = registry.load_model(load_state_dict(etds))
        jobs.append(("etds-m6c32-x4 training (trained)", lambda lm=lm: lm.module, lm.spec))
    rows, load = [], []
    started = time.perf_counter()
    for n, (name, make, spec) in enumerate(jobs, 1):
        load.append(os.getloadavg()[0])
        rows.append(run_one(name, make(), spec.in_channels, max(1, spec.min_size)))
        print(f"[{n}/{len(jobs)}] {name}: {rows[-1]['seconds']} s", file=sys.stderr, flush=True)
    head = (f"{'model':34} {'coll':>4} {'left':>4} {'params':>19} {'hand':>7} {'MACs/out px':>17} "
            f"{'vs hand fp32':>12} {'ref max':>7} {'fp64 rel':>8} {'s':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:34} {r['collapsed']:>4} {r['left']:>4} {r['params_before']:>9}->{r['params_after']:<9} "
              f"{r['params_hand']:>7} {r['macs_px_before']:>8.0f}->{r['macs_px_after']:<8.0f} "
              f"{r['max_abs_vs_hand_fp32']:12.1e} {r['ref_max']:7.2f} {r['whole_fp64_rel']:8.1e} {r['seconds']:6.1f}")
    atomic_write_json(args.out, {"command": " ".join(["python", "benchmarks/genrep_registry.py", *sys.argv[1:]]),
                                 "machine": machine_info(), "threads": args.threads,
                                 "load_avg_1min_during": [min(load), max(load)],
                                 "seconds": round(time.perf_counter() - started, 1), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
