"""The whole NTIRE ESR 2022 + 2024 zoo through `edgesr convert --zoo`, timed.

    python benchmarks/zoo.py [--out DIR] [--only NAME,...] [--no-bench]
    python benchmarks/zoo.py --eval-existing RUN_JSON --json OUT_JSON

Runs export/zoo/ntire-esr.toml (code + weights from ../shared/ntire-esr) exactly as
`edgesr convert --zoo INDEX -o DIR --force` does: one subprocess per model, cheap INT8 (the `trt`
QDQ graph, 8 calibration patches, no mixed-precision search), latency at 64x64 LR. Prints the
summary table and writes benchmarks/results/zoo.json: wall time, the machine (CPU model, cores)
and its load sampled during the run (os.getloadavg every 10 s: this machine is shared, so the
time is an upper bound of what an idle 2-core machine takes), per-model seconds and results.

--eval-existing takes the JSON of a finished run (made by older code, before convert --zoo
evaluated its bundles) and does the eval after convert on the bundles that run wrote (read only):
Set5 PSNR-Y of each fp32 bundle and INT8 graph against bicubic, each model judged again with the
scores, plus two checks of what "ok" claims (the INT8 graph file holds QDQ nodes; parity compared
on Set5 LR images). The result keeps the run's rows and says which code re-judged them.
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
from edgesr.errors import EdgesrError, one_line  # noqa: E402
from edgesr.zoo import eval_bundle, judge, run_zoo  # noqa: E402
from edgesr.zoo_index import read_index  # noqa: E402
from edgesr.zoo_summary import counts, summary_text, write_summary  # noqa: E402

SET5_NAMES = {"baby", "bird", "butterfly", "head", "woman"}


def _git_head() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=False).stdout.strip() or "?"
    except OSError:
        return "?"


def write_zoo_md(rec: dict, path: Path, outroot: Path) -> None:
    """zoo.md: the summary table (written by write_summary into outroot) under a header saying how
    it was measured."""
    write_summary(list(rec["results"]), outroot)
    m, ld = rec["machine"], rec["loadavg_1min"]
    head = [f"Measured by `{rec['command'][:120]}{'...' if len(rec['command']) > 120 else ''}` "
            f"({'complete' if rec['complete'] else 'PARTIAL: recorded before every model was done'}): "
            f"{rec['counts']['models']} models in {rec['wall_seconds']:.0f} s wall, {rec['jobs']} at a time, on "
            f"{m.get('cpu_model') or m.get('cpu') or '?'} ({m.get('logical_cpus') or '?'} cores); "
            f"1-min load average during the run: median {ld['median']:.1f} (min {ld['min']:.1f}, max {ld['max']:.1f}) "
            "- the machine was shared, so times are upper bounds of an idle machine's.", ""]
    ev = rec.get("eval_after_convert")
    if ev:
        head += [f"Eval after convert: `{ev['command']}` at {ev['code']} ({ev['seconds']:.0f} s): {ev['note']}.", ""]
    title, _, rest = (outroot / "summary.md").read_text().partition("\n")
    path.write_text("\n".join([title, "", *head]) + rest)


def eval_existing(run_json: Path, out_json: Path, index: str) -> int:
    """Eval after convert on a finished run's bundles; rows re-judged; written to out_json (+ .md)."""
    from edgesr.artifact_cache import onnx_is_quantized
    from edgesr.progress import track

    rec = json.loads(run_json.read_text())
    entries = {e.name: e for e in read_index(index)}
    t0 = time.perf_counter()
    for r in track(rec["results"], "eval after convert", unit="models"):
        od = Path(r["outdir"]) if r.get("outdir") else None
        if od is None or not (od / "report.json").is_file() or r["name"] not in entries:
            continue
        report = json.loads((od / "report.json").read_text())
        try:
            scores = eval_bundle(od, report)
        except EdgesrError as e:
            scores = {"error": one_line(e)[:300]}
        was = {k: r.get(k) for k in ("ok", "category", "reason")}
        verdict = judge(report, entries[r["name"]], scores)
        q = (report.get("int8") or {}).get("trt") or {}
        parity_samples = set((report.get("parity") or {}).get("samples") or [])
        r.update(verdict)
        r["ok"] = bool(verdict.get("ok"))
        if r["ok"]:
            r["category"] = r["reason"] = None
        r["checks"] = {"int8_graph_has_qdq": bool(q.get("path")) and (od / q["path"]).is_file()
                       and onnx_is_quantized(od / q["path"]),
                       "parity_on_set5_lr": sorted(parity_samples & SET5_NAMES) == sorted(SET5_NAMES),
                       "verdict_of_the_run": was}
    rec["counts"] = counts(rec["results"])
    m = machine_info()
    rec["eval_after_convert"] = {
        "command": f"python benchmarks/zoo.py --eval-existing {run_json.name}", "code": _git_head(),
        "seconds": round(time.perf_counter() - t0, 1), "cpu": m.get("cpu_model") or m.get("cpu"),
        "loadavg_1min": os.getloadavg()[0],
        "note": "the run's rows, each judged again after scoring its fp32 bundle and INT8 graph on Set5 "
                "(the run's own code did not evaluate its bundles)"}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(rec, indent=1, default=str) + "\n")
    with tempfile.TemporaryDirectory(prefix="edgesr-zoo-eval-") as tmp:
        write_zoo_md(rec, out_json.with_suffix(".md"), Path(tmp))
    c = rec["counts"]
    print(summary_text(rec["results"]))
    print(f"\n{c['ok']} of {c['models']} converted end to end after eval; failures: {c['failures_by_category']}")
    return 0


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
    ap.add_argument("--eval-existing", metavar="RUN_JSON", type=Path,
                    help="no conversion: score and re-judge the bundles a finished run wrote (see above)")
    args = ap.parse_args()
    if args.eval_existing:
        return eval_existing(args.eval_existing, Path(args.json), args.index)
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
        write_zoo_md(rec, Path(args.json).with_suffix(".md"), out)

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
