"""The whole NTIRE ESR 2022 + 2024 zoo through `edgesr convert --zoo`, timed.

    python benchmarks/zoo.py [--out DIR] [--only NAME,...] [--no-bench]

Runs export/zoo/ntire-esr.toml (code + weights from ../shared/ntire-esr) exactly as
`edgesr convert --zoo INDEX -o DIR --force` does: one subprocess per model, cheap INT8 (the `trt`
QDQ graph, 8 calibration patches, no mixed-precision search), latency at 64x64 LR. Prints the
summary table and writes benchmarks/results/zoo.json: wall time, the machine (CPU model, cores)
and its load sampled during the run (os.getloadavg every 10 s: this machine is shared, so the
time is an upper bound of what an idle 2-core machine takes), per-model seconds and results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgesr.bench import machine_info  # noqa: E402
from edgesr.zoo import counts, run_zoo, summary_text, write_summary  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=str(ROOT / "export" / "zoo" / "ntire-esr.toml"))
    ap.add_argument("--out", help="OUTROOT (default: a temporary folder, removed)")
    ap.add_argument("--only", help="comma-separated entry names")
    ap.add_argument("--no-bench", action="store_true", help="skip the per-model latency step")
    ap.add_argument("--jobs", type=int, default=1, help="models converted at once (default 1)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per model before it counts as a timeout (default: convert --zoo's)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "zoo.json"))
    args = ap.parse_args()
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="edgesr-zoo-")
    out = Path(args.out or tmp.name)
    loads: list[float] = []
    stop = threading.Event()

    def sample_load():
        while not stop.is_set():
            loads.append(os.getloadavg()[0])
            stop.wait(10)

    threading.Thread(target=sample_load, daemon=True).start()
    t0 = time.perf_counter()

    done: list[dict] = []

    def record(results: list[dict], wall: float, complete: bool) -> dict:
        srt = sorted(loads) or [os.getloadavg()[0]]
        return {"command": "python benchmarks/zoo.py" + (f" --only {args.only}" if args.only else "")
                + (" --no-bench" if args.no_bench else "") + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
                + (f" --timeout {args.timeout:g}" if args.timeout else ""),
                "complete": complete, "jobs": args.jobs,
                "wall_seconds": round(wall, 1), "machine": machine_info(),
                "loadavg_1min": {"median": srt[len(srt) // 2], "min": srt[0], "max": srt[-1], "samples": len(srt)},
                "counts": counts(results), "results": [{k: v for k, v in r.items() if k != "steps"} for r in results]}

    def write_md(rec: dict) -> None:
        """zoo.md: the summary table under a header saying how it was measured."""
        write_summary([r for r in rec["results"]], out)
        m, ld = rec["machine"], rec["loadavg_1min"]
        head = [f"Measured by `{rec['command'][:120]}{'...' if len(rec['command']) > 120 else ''}` "
                f"({'complete' if rec['complete'] else 'PARTIAL: the run was stopped before every model was done'}): "
                f"{rec['counts']['models']} models in {rec['wall_seconds']:.0f} s wall, {rec['jobs']} at a time, on "
                f"{m.get('cpu_model') or m.get('cpu') or '?'} ({m.get('logical_cpus') or '?'} cores); "
                f"1-min load average during the run: median {ld['median']:.1f} (min {ld['min']:.1f}, max {ld['max']:.1f}) "
                "- the machine was shared, so times are upper bounds of an idle machine's.", ""]
        Path(args.json).with_suffix(".md").write_text("\n".join(head) + (out / "summary.md").read_text())

    def on_done(i, n, r):
        done.append(r)
        # Written after every model: an interrupted run still leaves what it measured.
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        rec = record(done, time.perf_counter() - t0, False)
        Path(args.json).write_text(json.dumps(rec, indent=1, default=str) + "\n")
        write_md(rec | {"results": done})
        print(f"[{i + 1}/{n}] {r['name']}: {'ok' if r.get('ok') else 'FAILED ' + str(r.get('category'))} "
              f"({r.get('seconds')} s, {time.perf_counter() - t0:.0f} s total)", file=sys.stderr, flush=True)

    only = [s for s in args.only.split(",") if s] if args.only else None
    results = run_zoo(args.index, out, force=True, only=only, bench=not args.no_bench, jobs=args.jobs,
                      on_done=on_done, **({"timeout": args.timeout} if args.timeout else {}))
    wall = time.perf_counter() - t0
    stop.set()
    c = counts(results)
    print(summary_text(results))
    print(f"\n{c['ok']} of {c['models']} converted end to end; wall {wall:.0f} s; "
          f"load avg during the run: median {sorted(loads)[len(loads) // 2]:.1f}, max {max(loads):.1f}")
    rec = record(results, wall, True)
    Path(args.json).write_text(json.dumps(rec, indent=1, default=str) + "\n")
    write_md(rec | {"results": results})
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
