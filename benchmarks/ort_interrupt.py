"""What keeping ONNX Runtime interruptible costs: ``session.run`` vs ``edgesr``'s ``run_session``.

    python benchmarks/ort_interrupt.py [--sizes 16x16,64x64,180x320] [--seconds 3] [--threads 1]

``run_session`` (edgesr/backends/ort_runner.py) lets Ctrl-C, SIGTERM and ``--time-limit`` stop a
running inference. Per call it creates a ``RunOptions``, registers the run with a sleeping
watchdog thread and swaps Python's signal wakeup fd twice; with a time limit it also wakes
the watchdog once. This script times, on one session of a small real model (ETDS-T x2,
deploy form, seeded weights), three candidates interleaved round by round (order rotated
every round) so machine noise hits all alike:

* ``session.run``: the bare call,
* ``run_session``: the wrapper, no time limit (every edgesr run),
* ``run_session+limit``: the wrapper with a 60 s limit (``--time-limit 60``).

Sessions use ``session.intra_op.allow_spinning = 0`` so idle ORT threads do not spin between
calls. Prints a table (median, p10-p90 in ms, ratio to ``session.run`` with the per-round
p10-p90) and writes benchmarks/results/ort_interrupt.json with the machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgesr.backends.ort_runner import run_session  # noqa: E402
from edgesr.backends.ort_session import ort_session  # noqa: E402
from edgesr.bench import TimingPolicy, machine_info, ratio_summary, time_interleaved  # noqa: E402
from edgesr.fsutil import atomic_write_text  # noqa: E402
from edgesr.sizes import parse_hw_list  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
VARIANT = "etds-t-x2"


def export_model(folder: Path) -> Path:
    import torch

    from edgesr.export.onnx import export_onnx
    from edgesr.registry import build_variant

    torch.manual_seed(0)
    built = build_variant(VARIANT, "deploy")
    path = folder / "model.onnx"
    export_onnx(built.module, built.spec, path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16x16,64x64,180x320", help="LR input sizes HxW, comma-separated")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per candidate and size")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    ap.add_argument("--out", default=str(RESULTS / "ort_interrupt.json"))
    args = ap.parse_args(argv)

    import onnxruntime as ort

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesr-ortint-") as tmp:
        path = export_model(Path(tmp))
        sess = ort_session(path, threads=args.threads, spinning=False)
        name = sess.get_inputs()[0].name
        for h, w in parse_hw_list(args.sizes, "--sizes"):
            feed = {name: np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)}
            fns = {"session.run": lambda: sess.run(None, feed),
                   "run_session": lambda: run_session(sess, None, feed),
                   "run_session+limit": lambda: run_session(sess, None, feed, time_limit=60.0)}
            stats = time_interleaved(fns, TimingPolicy(warmup_seconds=0.5, min_runs=50,
                                                       min_seconds=args.seconds, max_runs=1_000_000))
            base = stats["session.run"]
            for cand, st in stats.items():
                s = np.asarray(st.samples_ms)
                row = {"size": f"{h}x{w}", "candidate": cand, "runs": st.runs, "median_ms": round(st.median_ms, 5),
                       "p10_ms": round(float(np.percentile(s, 10)), 5), "p90_ms": round(float(np.percentile(s, 90)), 5)}
                if cand != "session.run":
                    row |= {"vs_session_run": ratio_summary(st, base)}
                rows.append(row)
            print(f"[{h}x{w}] done ({base.runs} rounds)", file=sys.stderr)
    load_after = os.getloadavg()

    print(f"{'size':>8}  {'candidate':<18} {'runs':>6}  {'median ms':>10}  {'p10-p90 ms':>19}  "
          f"{'time / session.run (per-round p10-p90)':>40}")
    for r in rows:
        rel = r.get("vs_session_run")
        ratio = (f"{rel['ratio']:.4f} ({rel['paired_p10']:.3f}-{rel['paired_p90']:.3f})" if rel else "1 (baseline)")
        print(f"{r['size']:>8}  {r['candidate']:<18} {r['runs']:>6}  {r['median_ms']:>10.4f}  "
              f"{r['p10_ms']:>8.4f}-{r['p90_ms']:<8.4f}  {ratio:>40}")
    machine = machine_info()
    print(f"\n{machine.get('cpu_model')}, {machine.get('logical_cpus')} logical CPUs; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; onnxruntime {ort.__version__}, "
          f"{args.threads} intra-op thread(s), spinning off")
    out = {"model": VARIANT, "threads": args.threads, "seconds_per_candidate": args.seconds,
           "load_avg_before": load_before, "load_avg_after": load_after, "machine": machine,
           "onnxruntime": ort.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
