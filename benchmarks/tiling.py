"""Tiling benchmark: peak memory and latency cost of seam-free tiling (edgesr.upscale).

1. Peak RSS for a 3840x2160 x4 output (960x540 input), tiled vs untiled. Each case runs
   in a fresh subprocess; the peak is the kernel's high-water mark (VmHWM from
   /proc/self/status, cross-checked with resource.getrusage ru_maxrss). Reported:
   the process after loading the model and the input ("baseline"), the peak of
   inference into a preallocated float32 output ("inference"), and the peak of the
   whole file path: read PNG -> upscale -> write PNG ("file").
2. Latency at 1080p output (480x270 input, x4): tiled (several tile sizes) vs untiled,
   interleaved round-robin (edgesr.bench.time_interleaved), median of >= 5 runs with
   min / p90 / CV as the spread.

Model: ETDS-M x4 (ETDS_M6C32_x4.pth from ../shared when present, else random weights
in the deploy form: the same compute). Backends: ONNX Runtime (CPU) and PyTorch, both
at --threads (default 1: the machine is shared; single-thread numbers are the stable ones).

    python benchmarks/tiling.py [--threads N] [--quick]

Prints a table and writes benchmarks/results/tiling.json (with edgesr.bench.machine_info()).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("EDGESR_SHARED", REPO.parent / "shared"))
CKPT = SHARED / "checkpoints" / "etds-repo" / "ETDS" / "ETDS_M6C32_x4.pth"
RESULTS = REPO / "benchmarks" / "results" / "tiling.json"


def _status_kb(key: str) -> int:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def _load(backend: str, threads: int, workdir: Path):
    import torch

    torch.set_num_threads(threads)
    from edgesr.registry import build_variant, load_model

    if CKPT.is_file():
        lm, source = load_model(CKPT), CKPT.name
    else:
        torch.manual_seed(0)
        lm, source = build_variant("etds-m-x4", "deploy"), "random weights (etds-m-x4 deploy form)"
    if backend == "torch":
        from edgesr.backends.torch_runner import TorchRunner

        return TorchRunner(lm.module), lm.spec, source
    from edgesr.backends.ort_runner import OrtRunner
    from edgesr.export.onnx import export_onnx

    onnx_path = workdir / "etds_m_x4.onnx"
    if not onnx_path.exists():
        export_onnx(lm.module, lm.spec, onnx_path)
    return OrtRunner(onnx_path, threads=threads), lm.spec, source


def child(mode: str, backend: str, tile: int, threads: int, workdir: Path) -> dict:
    """One measurement in this (fresh) process; returns peak memory figures in MiB."""
    import numpy as np

    from edgesr.imaging import read_image
    from edgesr.upscale import plan_tiles, upscale_array, upscale_file

    runner, spec, source = _load(backend, threads, workdir)
    src = workdir / "input_960x540.png"
    plan = plan_tiles(540, 960, spec, tile)
    out: dict = {"mode": mode, "backend": backend, "tile": plan.tile, "overlap": plan.overlap,
                 "tiles": len(plan.tiles), "model": source}
    t0 = time.perf_counter()
    if mode == "inference":
        rgb = read_image(src).rgb
        out["baseline_mib"] = _status_kb("VmHWM") / 1024
        dst = np.empty((540 * 4, 960 * 4, 3), dtype=np.float32)
        upscale_array(runner, rgb, spec, plan=plan, out=dst)
    else:
        out["baseline_mib"] = _status_kb("VmHWM") / 1024
        dst_path = workdir / f"out_{backend}_{tile}.png"
        upscale_file(runner, spec, src, dst_path, tile=tile, force=True)
        dst_path.unlink()
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["peak_mib"] = _status_kb("VmHWM") / 1024
    out["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(mode: str, backend: str, tile: int, threads: int, workdir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, backend, str(tile), "--threads", str(threads),
           "--workdir", str(workdir)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"child {mode} {backend} tile={tile} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def latency(backend: str, threads: int, workdir: Path, tiles: list[int], quick: bool) -> dict:
    import numpy as np

    from edgesr.bench import TimingPolicy, time_interleaved
    from edgesr.upscale import plan_tiles, upscale_array

    runner, spec, source = _load(backend, threads, workdir)
    h, w = 1080 // 4, 1920 // 4
    rng = np.random.default_rng(0)
    img = rng.random((h, w, 3), dtype=np.float32)
    out = np.empty((h * 4, w * 4, 3), dtype=np.float32)
    fns, plans = {}, {}
    for t in [0, *tiles]:
        plan = plan_tiles(h, w, spec, t)
        key = "untiled" if t == 0 else f"tile {plan.tile}+{plan.overlap}"
        plans[key] = plan
        fns[key] = (lambda p=plan: upscale_array(runner, img, spec, plan=p, out=out))
    policy = TimingPolicy(warmup_seconds=1.0, min_runs=5 if quick else 7, min_seconds=1.0 if quick else 3.0)
    stats = time_interleaved(fns, policy)
    base = stats["untiled"].median_ms
    rows = []
    for k, s in stats.items():
        p = plans[k]
        box_px = sum((t.box[1] - t.box[0]) * (t.box[3] - t.box[2]) for t in p.tiles)
        rows.append({"backend": backend, "case": k, "tiles": len(p.tiles), "input": f"{w}x{h}",
                     "output": f"{w * 4}x{h * 4}", "computed_px_ratio": round(box_px / (h * w), 3),
                     **s.to_dict(), "cost_vs_untiled": round(s.median_ms / base - 1.0, 4)})
    return {"model": source, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer runs (smoke test)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "BACKEND", "TILE"), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.child:
        mode, backend, tile = args.child
        print(json.dumps(child(mode, backend, int(tile), args.threads, Path(args.workdir))))
        return 0

    import numpy as np

    from edgesr.bench import machine_info
    from edgesr.cli.output import format_table
    from edgesr.imaging import write_image

    with tempfile.TemporaryDirectory(prefix="edgesr-tiling-") as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:540, 0:960].astype(np.float32)
        base = 0.5 + 0.3 * np.sin(xx[..., None] / 9.0 + np.array([0, 1, 2])) * np.cos(yy[..., None] / 7.0)
        write_image(work / "input_960x540.png", np.clip(base + 0.1 * rng.standard_normal(base.shape), 0, 1))
        _load("ort", args.threads, work)  # export the ONNX once, outside the measurements

        memory = []
        for backend in ("ort", "torch"):
            for mode in ("inference", "file"):
                for tile in (0, 256, 128):
                    r = run_child(mode, backend, tile, args.threads, work)
                    memory.append(r)
                    print(f"  memory {backend} {mode} tile={tile}: peak {r['peak_mib']:.0f} MiB", file=sys.stderr)
        lat = [latency(b, args.threads, work, [256, 128, 64], args.quick) for b in ("ort", "torch")]

    out_mib = 2160 * 3840 * 3 * 4 / 2**20
    result = {
        "benchmark": "tiling", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": args.threads,
        "model": memory[0]["model"], "machine": machine_info(),
        "memory": {"output": "3840x2160 (x4 from 960x540)", "float32_output_buffer_mib": round(out_mib, 1),
                   "rows": memory},
        "latency": {"output": "1920x1080 (x4 from 480x270)", "rows": [r for l in lat for r in l["rows"]]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nPeak RSS, 3840x2160 x4 output (960x540 input), {result['model']}, {args.threads} thread(s); "
          f"the float32 output buffer alone is {out_mib:.0f} MiB")
    print(format_table(["backend", "path", "tile", "tiles", "baseline MiB", "peak MiB", "peak - baseline", "s"],
                       [[r["backend"], r["mode"], f"{r['tile']}+{r['overlap']}" if r["tile"] else "untiled", r["tiles"],
                         round(r["baseline_mib"]), round(r["peak_mib"]), round(r["peak_mib"] - r["baseline_mib"]),
                         r["seconds"]] for r in memory]))
    print(f"\nLatency, 1920x1080 output (480x270 input), interleaved, {args.threads} thread(s)")
    print(format_table(["backend", "case", "tiles", "px computed", "median ms", "min ms", "p90 ms", "CV", "runs",
                        "cost vs untiled"],
                       [[r["backend"], r["case"], r["tiles"], r["computed_px_ratio"], r["median_ms"], r["min_ms"],
                         r["p90_ms"], r["cv"], r["runs"], f"{100 * r['cost_vs_untiled']:+.1f}%"]
                        for r in result["latency"]["rows"]]))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
