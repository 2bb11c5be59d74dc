"""Peak memory of `edgesr upscale` on a large PNG (streamed output, --tile auto, --max-memory).

Runs the real CLI (``python -m edgesr upscale MODEL in.png out.png --json``) in a child
process per case and records its peak RSS two ways: the kernel's high-water mark sampled
from /proc/<pid>/status (VmHWM) while it runs, and resource.getrusage(RUSAGE_CHILDREN)
ru_maxrss after it exits. The input is a natural photo (hubble_deep_field.jpg from the
bundled sample images) mirrored to SIZE x SIZE, written as an 8-bit RGB PNG.

Model: the bundled ECBSR-M4C16 x4 checkpoint (edgesr/assets; reparameterized on load), so the
benchmark needs nothing outside the package. With ``--compare-tile N`` a second run with
``--tile N`` must produce a byte-identical file (the model tiles exactly).

    python benchmarks/upscale_memory.py [--size 8000] [--threads 2] [--max-memory 1.5G] [--compare-tile 512]

Prints a table and writes benchmarks/results/upscale_memory.json (with machine info and the
load average during the run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "upscale_memory.json"


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def make_input(path: Path, size: int) -> None:
    """A natural photo mirrored to size x size, streamed row block by row block into a PNG."""
    import numpy as np

    from edgesr.imaging import PngWriter, read_codes, streaming_output
    from edgesr.sample_images import sample_images

    photo = read_codes([p for p in sample_images() if p.name.startswith("hubble")][0]).samples
    h, w = photo.shape[:2]
    xs = np.arange(size) % (2 * w)
    xs = np.where(xs < w, xs, 2 * w - 1 - xs)
    with streaming_output(path) as f:
        png = PngWriter(f, size, size, 3, 8)
        for y0 in range(0, size, 256):
            ys = np.arange(y0, min(size, y0 + 256)) % (2 * h)
            ys = np.where(ys < h, ys, 2 * h - 1 - ys)
            png.write_rows(np.ascontiguousarray(photo[ys][:, xs]))
        png.close()


def run_case(model: Path, src: Path, dst: Path, args, tile: str) -> dict:
    cmd = [sys.executable, "-m", "edgesr", "upscale", str(model), str(src), str(dst), "--json", "--force",
           "--tile", tile, "--threads", str(args.threads)]
    if args.max_memory:
        cmd += ["--max-memory", args.max_memory]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_kb, loads = [0], []

    def watch():
        while proc.poll() is None:
            peak_kb[0] = max(peak_kb[0], _hwm_kb(proc.pid))
            loads.append(os.getloadavg()[0])
            time.sleep(0.2)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"upscale failed ({proc.returncode}):\n{err[-3000:]}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res = json.loads(out)
    img = res["images"][0]
    return {"tile_arg": tile, "tile": img["tile"], "overlap": img["overlap"], "tiles": img["tiles"],
            "exact": img["exact"], "tiling": img["tiling"], "input": img["input_size"], "output": img["output_size"],
            "max_memory": res["max_memory"], "estimated_peak": img["memory"]["estimated_peak"],
            "peak_rss_vmhwm": peak_kb[0] * 1024, "peak_rss_getrusage": ru * 1024 if ru > before else None,
            "seconds": round(seconds, 1), "output_bytes": dst.stat().st_size,
            "output_sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
            "load_avg_median": sorted(loads)[len(loads) // 2] if loads else None,
            "load_avg_max": max(loads) if loads else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8000, help="input side in pixels (default 8000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-memory", default=None, help="passed to --max-memory (default: edgesr's default)")
    ap.add_argument("--compare-tile", default=None, help="also run with this --tile; outputs must be identical")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    from edgesr.bench import machine_info
    from edgesr.cli.output import format_table
    from edgesr.pipeline import BUNDLED_CHECKPOINT

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesr-mem-", dir=os.environ.get("EDGESR_BENCH_TMP")) as tmp:
        work = Path(tmp)
        src = work / f"in_{args.size}.png"
        t0 = time.perf_counter()
        make_input(src, args.size)
        print(f"input {src.name}: {src.stat().st_size / 2**20:.0f} MiB, made in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        for tile in ["auto"] + ([args.compare_tile] if args.compare_tile else []):
            r = run_case(BUNDLED_CHECKPOINT, src, work / f"out_{tile}.png", args, tile)
            rows.append(r)
            print(f"  tile {tile}: peak {r['peak_rss_vmhwm'] / 2**20:.0f} MiB in {r['seconds']} s", file=sys.stderr)
            (work / f"out_{tile}.png").unlink()
    identical = len({r["output_sha256"] for r in rows}) == 1 if len(rows) > 1 else None
    result = {"benchmark": "upscale_memory", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "model": f"{BUNDLED_CHECKPOINT.name} (ECBSR-M4C16 x4, bundled)", "threads": args.threads,
              "machine": machine_info(), "rows": rows, "outputs_identical": identical}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    mib = 2 ** 20
    print(f"\nedgesr upscale, {args.size}x{args.size} PNG -> x4, {result['model']}, {args.threads} thread(s)")
    print(format_table(["--tile", "tile+overlap", "tiles", "budget MiB", "estimated MiB", "peak RSS MiB (VmHWM)",
                        "peak RSS MiB (getrusage)", "s", "output MiB", "load avg"],
                       [[r["tile_arg"], f"{r['tile']}+{r['overlap']}" if r["tiles"] > 1 else "untiled", r["tiles"],
                         round(r["max_memory"] / mib), round(r["estimated_peak"] / mib),
                         round(r["peak_rss_vmhwm"] / mib),
                         round(r["peak_rss_getrusage"] / mib) if r["peak_rss_getrusage"] else "-",
                         r["seconds"], round(r["output_bytes"] / mib), r["load_avg_median"]] for r in rows]))
    if identical is not None:
        print(f"outputs identical: {identical}")
    print(f"wrote {args.out}")
    return 0 if identical in (None, True) else 1


if __name__ == "__main__":
    sys.exit(main())
